// Keyboard shortcuts of the review pages (listed on each page). Everything works without this script too.
"use strict";

function typingIn(element) {
  return element.matches("input, textarea, select") || element.isContentEditable;
}

function openPanel(id, focusSelector) {
  const panel = document.getElementById(id);
  if (!panel) return;
  panel.open = true;
  const field = panel.querySelector(focusSelector);
  if (field) field.focus();
}

document.addEventListener("keydown", (event) => {
  const target = event.target;
  if (event.key === "Escape") {
    for (const id of ["reject-panel", "edit-panel"]) {
      const panel = document.getElementById(id);
      if (panel) panel.open = false;
    }
    if (typingIn(target)) target.blur();
    return;
  }
  if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
    const form = target.closest && target.closest("form");
    if (form) { event.preventDefault(); form.requestSubmit(); }
    return;
  }
  if (target.tagName === "SELECT" && target.id === "reason") {
    if (/^[1-9]$/.test(event.key) && Number(event.key) <= target.options.length) {
      event.preventDefault();
      target.selectedIndex = Number(event.key) - 1;
      return;
    }
    if (event.key === "Enter") { event.preventDefault(); target.form.requestSubmit(); return; }
  }
  if (typingIn(target) || event.ctrlKey || event.metaKey || event.altKey) return;
  const player = document.getElementById("player");
  switch (event.key) {
    case "a": {
      const form = document.getElementById("accept-form");
      if (form) { event.preventDefault(); form.requestSubmit(); }
      break;
    }
    case "r":
      event.preventDefault();
      openPanel("reject-panel", "select");
      break;
    case "e":
      event.preventDefault();
      openPanel("edit-panel", "textarea");
      break;
    case " ":
      if (player) { event.preventDefault(); if (player.paused) player.play(); else player.pause(); }
      break;
    case "n": {
      const form = document.getElementById("next-form");
      if (form) { event.preventDefault(); form.requestSubmit(); }
      break;
    }
    case "?": {
      const list = document.getElementById("shortcuts");
      if (list) list.classList.toggle("hidden");
      break;
    }
  }
});
