// Copy buttons: served from /static so the CSP needs no inline script.
  for (const b of document.querySelectorAll("button[data-copy]"))
    b.addEventListener("click", () => navigator.clipboard.writeText(document.getElementById(b.dataset.copy).textContent));
