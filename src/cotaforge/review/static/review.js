// Keyboard shortcuts and the spectrogram's playhead (listed on each page). Everything works without this script too.
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
  if (id === "edit-panel") panel.scrollIntoView({block: "start"});
}

function submitForm(id, event) {
  const form = document.getElementById(id);
  if (form) { event.preventDefault(); form.requestSubmit(); }
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
    if (event.key === "Enter") {
      event.preventDefault();
      // No reason is chosen at first; Enter does nothing until one is.
      if (target.value) target.form.requestSubmit();
      return;
    }
  }
  if (typingIn(target) || event.ctrlKey || event.metaKey || event.altKey) return;
  const player = document.getElementById("player");
  switch (event.key) {
    case "a": submitForm("accept-form", event); break;
    case "s": submitForm("skip-form", event); break;
    case "u": submitForm("undo-form", event); break;
    case "n": submitForm("next-form", event); break;
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
    case "?": {
      const list = document.getElementById("shortcuts");
      if (list) list.classList.toggle("hidden");
      break;
    }
  }
});

// The Edit button opens the edit panel (the link alone only scrolls to it).
document.addEventListener("click", (event) => {
  const button = event.target.closest && event.target.closest("#edit-button");
  if (button) { event.preventDefault(); openPanel("edit-panel", "textarea"); }
});

// The playhead: a line over the spectrogram's plot area at the audio's current time; a click there seeks.
(function playhead() {
  const wrap = document.getElementById("spectro-wrap");
  const player = document.getElementById("player");
  const line = document.getElementById("playhead");
  const image = document.getElementById("spectrogram");
  if (!wrap || !player || !line || !image) return;
  const left = Number(wrap.dataset.plotLeft), right = Number(wrap.dataset.plotRight);
  const duration = () => (isFinite(player.duration) && player.duration > 0 ? player.duration : Number(wrap.dataset.durationS));
  function draw() {
    const total = duration();
    if (!(total > 0)) return;
    const fraction = Math.min(Math.max(player.currentTime / total, 0), 1);
    line.style.left = (image.clientWidth * (left + fraction * (right - left))) + "px";
    line.hidden = false;
  }
  function follow() { draw(); if (!player.paused) requestAnimationFrame(follow); }
  player.addEventListener("play", follow);
  for (const name of ["timeupdate", "seeked", "loadedmetadata"]) player.addEventListener(name, draw);
  window.addEventListener("resize", draw);
  image.addEventListener("load", draw);
  image.addEventListener("click", (event) => {
    const box = image.getBoundingClientRect();
    const fraction = ((event.clientX - box.left) / box.width - left) / (right - left);
    if (fraction >= 0 && fraction <= 1) { player.currentTime = fraction * duration(); draw(); }
  });
  if (image.complete) draw();
})();

// A refused edit: bring its explanation into view.
(function showEditErrors() {
  const errors = document.getElementById("edit-errors");
  if (errors) errors.scrollIntoView({block: "center"});
})();
