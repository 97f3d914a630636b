// The stand-alone settings page: hands <byok-keys> a token and says whose it is. The token
// is pasted into the sign-in form or, on this machine only (http://127.0.0.1 or
// localhost: `scripts/dev.sh`), comes from the link dev.sh prints (`#token=…`, a fragment:
// never sent to any server). A link from elsewhere cannot sign a person in as someone else
// (who would then own the keys they add). The token is kept in this page's memory only and
// leaves the address bar at once.
const keys = document.querySelector('byok-keys');
const form = document.getElementById('signin');
const input = document.getElementById('token');
const who = document.getElementById('who');

/** The `sub` a token names (read for display only: the vault checks the token). */
function subject(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(payload)).sub ?? null;
  } catch {
    return null;
  }
}

function signIn(token) {
  keys.token = token;
  form.hidden = true;
  who.hidden = false;
  who.querySelector('strong').textContent = subject(token) ?? 'an unknown user';
}

const local = ['127.0.0.1', 'localhost', '[::1]'].includes(location.hostname);
const fromLink = new URLSearchParams(location.hash.slice(1)).get('token');
if (fromLink) history.replaceState(null, '', location.pathname + location.search);
if (fromLink && local) {
  signIn(fromLink);
} else {
  form.hidden = false;
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    signIn(input.value.trim());
    input.value = '';
  });
}
document.getElementById('signout').addEventListener('click', () => location.reload());
