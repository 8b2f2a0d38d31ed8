"use strict";
// Exchange the access token for an HttpOnly session cookie, then load the app.
document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = document.getElementById("access-token").value.trim();
  const response = await fetch("/api/session", { method: "POST", headers: { Authorization: "Bearer " + token } });
  if (response.ok) {
    window.location.assign("/");
  } else {
    const body = await response.json().catch(() => ({}));
    document.getElementById("login-error").textContent = body.error || "sign-in failed";
  }
});
