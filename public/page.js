// The stand-alone settings page: hands <byok-keys> a token. The token comes from the link
// `scripts/dev.sh` prints (`#token=…`, a fragment: never sent to any server), or is pasted
// into the sign-in form. It is kept in this page's memory only and leaves the address bar
// at once.
const keys = document.querySelector('byok-keys');
const form = document.getElementById('signin');
const input = document.getElementById('token');

const fromLink = new URLSearchParams(location.hash.slice(1)).get('token');
if (fromLink) {
  history.replaceState(null, '', location.pathname + location.search);
  keys.token = fromLink;
} else {
  form.hidden = false;
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    keys.token = input.value.trim();
    input.value = '';
    form.hidden = true;
  });
}
