// What every page shares: calls with the signed-in caller's key, and signing in for one role.

export const $ = (id) => document.getElementById(id);

const session = { key: "" };

/** A call to this page's own origin with the caller's key (and a JSON body, when given). */
export async function call(path, { method = "GET", body } = {}) {
  const headers = { "X-API-Key": session.key };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
}

/** A stored image fetched with the caller's key, as an object URL ("" if it could not be read);
 * decoded before it is returned, so showing it is instant. */
export async function loadImage(path) {
  const res = await call(path);
  if (!res.ok) return "";
  const src = URL.createObjectURL(await res.blob());
  const img = new Image();
  img.src = src;
  await img.decode().catch(() => {});
  return src;
}

/** The sign-in form of #signin: a key of ``role`` (kept for the tab in session storage) calls
 * ``onSignedIn(me)``; another role's key or an unknown one is refused there, saying why. */
export function signInFor(role, onSignedIn) {
  const stored = `nicheloop-${role}-key`;

  function refuse(message) {
    sessionStorage.removeItem(stored);
    session.key = "";
    $("signin").hidden = false;
    $("signin-error").textContent = message;
    return null;
  }

  async function signIn(key) {
    session.key = key;
    const res = await call("/v1/whoami");
    if (res.status === 401) return refuse("That key is not one of this service's, or it was revoked.");
    if (!res.ok) return refuse(`The service answered ${res.status}; try again.`);
    const me = await res.json();
    if (me.role !== role) {
      const a = /^[aeiou]/.test(me.role) ? "an" : "a";
      return refuse(`This page is for ${role}s; that key is ${a} ${me.role}'s. Ask an admin for a key of the ${role} role.`);
    }
    sessionStorage.setItem(stored, key);
    $("signin").hidden = true;
    $("who").textContent = `Signed in as ${me.name}`;
    await onSignedIn(me);
    return me;
  }

  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    $("signin-error").textContent = "";
    signIn($("key").value.trim());
  });
  const key = sessionStorage.getItem(stored);
  if (key) signIn(key);
  else $("signin").hidden = false;
}

/** Whether a key is signed in. */
export const signedIn = () => session.key !== "";
