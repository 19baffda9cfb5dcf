// echomesh console: live updates, copy buttons, confirmations. No dependencies, no inline
// scripts (the Content-Security-Policy forbids them).
"use strict";
(function () {
  // Refresh the page's live part every 2 s, except while the user is in one of its controls.
  const live = document.getElementById("live");
  const updated = document.getElementById("updated");
  let normal = updated ? updated.textContent : "";
  async function refresh() {
    if (!live || document.hidden) return;
    const active = document.activeElement;
    if (active && active !== document.body && live.contains(active)) return;
    try {
      const r = await fetch(live.dataset.src, { credentials: "same-origin", cache: "no-store" });
      if (r.status === 401) { location.reload(); return; }
      if (!r.ok) throw new Error(String(r.status));
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      live.replaceChildren(...Array.from(doc.body.childNodes));
      if (updated) { updated.textContent = normal; updated.classList.remove("stale"); }
    } catch (e) {
      if (updated) { updated.textContent = updated.dataset.stale; updated.classList.add("stale"); }
    }
  }
  if (live && live.dataset.src) setInterval(refresh, 2000);

  // Copy buttons: data-copy holds the text.
  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-copy]");
    if (!b) return;
    try {
      await navigator.clipboard.writeText(b.dataset.copy);
      const label = b.textContent;
      b.textContent = "✓";
      setTimeout(() => { b.textContent = label; }, 1500);
    } catch (e) {
      window.prompt("", b.dataset.copy);
    }
  });

  // Forms with data-confirm ask first.
  document.addEventListener("submit", (ev) => {
    const msg = ev.target.dataset && ev.target.dataset.confirm;
    if (msg && !window.confirm(msg)) ev.preventDefault();
  });
})();
