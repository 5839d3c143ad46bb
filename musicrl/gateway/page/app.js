// The listening page: ask for a comparison, play both clips, report real playback, award the trophy.
// Playback is measured from the audio elements' own events: time only counts while a clip plays forward.
// The choice buttons stay disabled until both clips were played for the share the server asks for
// (min_listened_ms) or to their end: a vote without listening would be dropped from the training data.
"use strict";

const HEADERS = { "Content-Type": "application/json", "X-Requested-With": "musicrl-page" };
const statusLine = document.getElementById("status");
const section = document.getElementById("comparison");
const cards = [...document.querySelectorAll(".clip")];
let comparison = null;

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST", headers: HEADERS, credentials: "same-origin", body: JSON.stringify(body), keepalive: true,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || `request failed with status ${response.status}`);
  return data;
}

function say(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

const choiceButtons = () => document.querySelectorAll("#comparison button");
let answered = false;

function listenedEnough(card) {
  return Boolean(card.playback) && (card.playback.completed || card.playback.listenedMs >= card.minListenedMs);
}

function updateChoices() {
  const ready = cards.every(listenedEnough);
  choiceButtons().forEach((b) => { b.disabled = answered || !ready; });
  if (!answered) {
    const seconds = Math.max(...cards.map((card) => card.minListenedMs)) / 1000;
    say(ready ? "Now choose." : `Listen to at least ${seconds.toFixed(1)} s of each clip (or to its end) to vote.`);
  }
}

function trackPlayback(card, clip) {
  const audio = card.querySelector("audio");
  const label = card.querySelector(".listened");
  const state = { listenedMs: 0, completed: false, lastTime: null, reported: "" };
  card.playback = state;
  card.minListenedMs = clip.min_listened_ms;
  audio.src = clip.audio_url;
  audio.onplay = () => { state.lastTime = audio.currentTime; };
  audio.ontimeupdate = () => {
    if (state.lastTime !== null && !audio.paused) {
      const step = audio.currentTime - state.lastTime;
      if (step > 0 && step < 1.5) state.listenedMs += step * 1000;  // forward play, not a seek
      state.lastTime = audio.currentTime;
    }
    label.textContent = `Listened ${(state.listenedMs / 1000).toFixed(1)} s`;
    updateChoices();
  };
  audio.onseeking = () => { state.lastTime = null; };
  audio.onseeked = () => { state.lastTime = audio.paused ? null : audio.currentTime; };
  const report = async () => {
    const listened = Math.round(state.listenedMs);
    const snapshot = `${listened}/${state.completed}`;  // 'pause' fires just before 'ended': report both
    if (snapshot === state.reported) return;
    state.reported = snapshot;
    try {
      await post(`/v1/comparisons/${comparison.id}/playback`,
                 { clip_id: clip.id, listened_ms: listened, completed: state.completed });
    } catch (error) { say(error.message, true); }
  };
  audio.onpause = report;
  audio.onended = () => {
    state.completed = true;
    state.lastTime = null;
    label.textContent += " (to the end)";
    updateChoices();
    report();
  };
  card.report = report;
}

async function compare(event) {
  event.preventDefault();
  const prompt = document.getElementById("prompt").value.trim();
  if (!prompt) return;
  document.getElementById("compare").disabled = true;
  section.hidden = true;
  say("Generating two clips…");
  try {
    comparison = await post("/v1/comparisons", { prompt });
    comparison.clips.forEach((clip, position) => {
      const card = cards[position];
      card.dataset.slot = clip.slot;
      card.classList.remove("winner");
      card.querySelector(".listened").textContent = "Not played yet";
      trackPlayback(card, clip);
    });
    answered = false;
    section.hidden = false;
    updateChoices();
  } catch (error) {
    say(error.message, true);
  } finally {
    document.getElementById("compare").disabled = false;
  }
}

async function choose(choice, winner) {
  if (!cards.every(listenedEnough)) { updateChoices(); return; }
  await Promise.all(cards.map((card) => card.report && card.report()));  // playback first, then the choice
  try {
    await post(`/v1/comparisons/${comparison.id}/preference`, { choice });
    answered = true;
    choiceButtons().forEach((b) => { b.disabled = true; });
    if (winner) winner.classList.add("winner");
    say("Thank you! Your choice was recorded. Try another prompt.");
  } catch (error) {
    say(error.message, true);
  }
}

document.getElementById("prompt-form").addEventListener("submit", compare);
cards.forEach((card) => {
  card.querySelector(".trophy").addEventListener("click", () => choose(card.dataset.slot, card));
});
document.getElementById("tie").addEventListener("click", () => choose("tie", null));
document.getElementById("none").addEventListener("click", () => choose("none", null));
