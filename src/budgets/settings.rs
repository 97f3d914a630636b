//! The budgets section of the configuration: `SYSTEM_KEY_BUDGETS`, the operator's default
//! limits on each user's use of system keys (JSON: `{"<provider>"|"*": {"period", …}}`).

use super::{parse_system_budgets, SystemBudgets};
use crate::domain::Vars;

pub struct BudgetSettings {
    /// Each user's default budgets on system-key use (empty: none).
    pub system: SystemBudgets,
}

impl BudgetSettings {
    pub fn parse(vars: &mut Vars) -> BudgetSettings {
        let system = match vars.get("SYSTEM_KEY_BUDGETS") {
            None => SystemBudgets::new(),
            Some(raw) if raw.trim().is_empty() => SystemBudgets::new(),
            Some(raw) => match serde_json::from_slice(raw.as_bytes()) {
                Ok(v) => match parse_system_budgets(&v, "") {
                    Ok(b) => b,
                    Err(errors) => {
                        let what: Vec<String> = errors
                            .iter()
                            .map(|e| format!("{} {}", e.field, e.message))
                            .collect();
                        vars.problem("SYSTEM_KEY_BUDGETS", what.join("; "));
                        SystemBudgets::new()
                    }
                },
                Err(_) => {
                    vars.problem("SYSTEM_KEY_BUDGETS", "is not JSON");
                    SystemBudgets::new()
                }
            },
        };
        BudgetSettings { system }
    }
}
