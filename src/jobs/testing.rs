//! The world the cron and the queue consumers run in, over the in-memory fakes: what they
//! stored, queued and logged is there to be read after a run.

use std::cell::{Cell, RefCell};

use async_trait::async_trait;
use futures::executor::block_on;
use serde_json::Value;

use super::{consume, cron, Background, Batch, CronRun, JobRecord, Level};
use crate::audit::{Action, Actor, ActorType, AuditEvent};
use crate::config::Config;
use crate::crypto::MasterKeys;
use crate::domain::{ConfigError, StoreError, Timestamp, UserId};
use crate::notify::{NotificationStore, StoredNotice};
use crate::testing::{
    test_ring, CountingLimiter, FakeClock, FakeHttp, FixedJitter, MemoryAudit, MemoryJobs,
    MemoryStore,
};

pub(super) const NOW_MS: u64 = 1_800_000_000_000;
pub(super) const SCHEDULE: &str = "0 * * * *";
const MASTER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
static JITTER: FixedJitter = FixedJitter(0.5);

/// Notices waiting for the deliverer: none to claim, the earliest due at `due`.
#[derive(Default)]
pub(super) struct Notices {
    pub(super) due: Cell<Option<Timestamp>>,
}

#[async_trait(?Send)]
impl NotificationStore for Notices {
    async fn claim(
        &self,
        _now: Timestamp,
        _lease_until: Timestamp,
        _limit: u32,
    ) -> Result<Vec<StoredNotice>, StoreError> {
        Ok(Vec::new())
    }
    async fn delivered(&self, _id: &str) -> Result<(), StoreError> {
        Ok(())
    }
    async fn failed(
        &self,
        _id: &str,
        _attempts: u32,
        _next_at: Timestamp,
        _problem: &str,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        Ok(self.due.get())
    }
}

pub(super) struct Bed {
    pub(super) config: Result<Config, Vec<ConfigError>>,
    /// The master keys the audit chain is sealed with (the configuration's, or those read
    /// alone when it has problems).
    pub(super) keys: Option<MasterKeys>,
    pub(super) store: MemoryStore,
    pub(super) audit: MemoryAudit,
    pub(super) jobs: MemoryJobs,
    pub(super) notices: Notices,
    pub(super) clock: FakeClock,
    pub(super) limiter: CountingLimiter,
    pub(super) logs: RefCell<Vec<(Level, String)>>,
}

impl Bed {
    /// A configuration with a master key and `vars`.
    pub(super) fn with(vars: &[(&str, &str)]) -> Self {
        Self::configured(true, vars)
    }

    /// A configuration without a master key: nothing can be sealed or opened.
    pub(super) fn without_master_key() -> Self {
        Self::configured(false, &[])
    }

    /// A configuration with problems; the master keys still read alone.
    pub(super) fn with_config_problems() -> Self {
        let mut bed = Self::configured(true, &[]);
        let problems = Config::parse(|_| None).err();
        bed.config = Err(problems.expect("a configuration without auth has problems"));
        bed.keys = Some(test_ring());
        bed
    }

    fn configured(master: bool, vars: &[(&str, &str)]) -> Self {
        let config = Config::parse(|k| match k {
            k if vars.iter().any(|(n, _)| *n == k) => vars
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string()),
            "AUTH_JWT_SECRET" => Some("0123456789abcdef0123456789abcdef".into()),
            "AUTH_AUDIENCE" => Some("https://app.example".into()),
            "MASTER_KEY" if master => Some(MASTER.into()),
            _ => None,
        });
        let audit = MemoryAudit::default();
        Self {
            keys: master.then(test_ring),
            config,
            store: MemoryStore {
                outbox: audit.outbox.clone(),
                anchors: [audit.heads.clone(), audit.checkpoints.clone()],
                ..Default::default()
            },
            audit,
            jobs: MemoryJobs::default(),
            notices: Notices::default(),
            clock: FakeClock::at(NOW_MS),
            limiter: CountingLimiter::new(1000),
            logs: RefCell::default(),
        }
    }

    fn background<'a>(
        &'a self,
        http: &'a FakeHttp<'a>,
        log: &'a dyn Fn(Level, &str),
    ) -> Background<'a> {
        Background {
            config: self.config.as_ref().map_err(Vec::as_slice),
            chain_keys: self.keys.as_ref(),
            credentials: &self.store,
            progress: &self.store,
            queue: &self.jobs,
            audit: &self.audit,
            sink: &self.audit,
            notices: &self.notices,
            http,
            clock: &self.clock,
            jitter: &JITTER,
            limiter: &self.limiter,
            infisical: None,
            log,
        }
    }

    fn logger(&self) -> impl Fn(Level, &str) + '_ {
        |level, line| self.logs.borrow_mut().push((level, line.to_owned()))
    }

    /// One scheduled run.
    pub(super) fn cron(&self) -> CronRun {
        let http = FakeHttp::new(&self.clock, Vec::new());
        let log = self.logger();
        block_on(cron(&self.background(&http, &log), SCHEDULE))
    }

    /// One batch of `bodies` from the queue named `queue`.
    pub(super) fn consume(&self, queue: &str, bodies: &[Value]) -> Batch {
        let http = FakeHttp::new(&self.clock, Vec::new());
        let log = self.logger();
        block_on(consume(&self.background(&http, &log), queue, bodies))
    }

    /// The lines logged at `level`, in order.
    pub(super) fn logged(&self, level: Level) -> Vec<String> {
        self.logs
            .borrow()
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, line)| line.clone())
            .collect()
    }

    /// Puts an event of `user` into the outbox, `ms_ago` before now; `detail` as given.
    pub(super) fn pending_event(&self, user: &str, ms_ago: u64, detail: Option<Value>) {
        let id = format!("ev_{}", self.audit.outbox.rows.borrow().len());
        let mut event = AuditEvent::new(
            id,
            Timestamp::from_millis(NOW_MS - ms_ago),
            &UserId::parse(user).unwrap(),
            Action::CredentialValidated,
            Actor {
                kind: ActorType::Service,
                id: "revalidation".into(),
            },
        );
        event.detail = detail;
        self.audit.outbox.push(&event);
    }

    /// A rotation job in `state`, last advanced `ms_ago` before now.
    pub(super) fn job(&self, id: &str, state: &str, ms_ago: u64) {
        let at = Timestamp::from_millis(NOW_MS - ms_ago);
        self.store.jobs.borrow_mut().push(JobRecord {
            id: id.into(),
            kind: "rewrap".into(),
            state: state.into(),
            total: 10,
            done: 0,
            failed: 0,
            cursor: None,
            created_at: at,
            updated_at: at,
        });
    }
}
