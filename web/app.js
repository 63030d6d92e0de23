// The digits page: draw (Pointer Events: mouse, pen, touch) or drop an image, send it to this site's
// POST explanations/<model>, show the top-k answers, the 28x28 frame the model saw and the pixels that drove it.
// Plain JavaScript, no framework, no build step, nothing from another origin (the gateway's CSP allows none).
"use strict";

(() => {
  const BRUSH = 20;            // stroke width on the 280-pixel pad: ~2 model pixels, as MNIST's pen strokes
  const CLASSIFY_DELAY_MS = 120; // after a stroke ends: a second stroke started sooner is part of the same digit
  const CREDENTIAL_KEY = "digits.credential"; // sessionStorage, only when the user ticks "remember"

  const $ = (id) => document.getElementById(id);
  const app = $("app");
  const pad = $("pad");
  const ink = pad.getContext("2d");
  const result = $("result");
  const endpoint = new URL(`explanations/${encodeURIComponent(app.dataset.model)}`, document.baseURI);

  // What is on the pad: an optional dropped image under the strokes; the history undoes one step at a time.
  let background = null; // an ImageBitmap
  let strokes = [];      // each an array of [x, y] in pad pixels
  let history = [];      // {kind: "stroke"} | {kind: "image", previous: {background, strokes}}
  let current = null;    // the stroke being drawn
  let activePointer = null;
  let version = 0;       // bumped on every change of what is on the pad; the answer shown says which it is for
  let timer = null;
  let lastRequest = null; // {body, type, version}: resent once a credential is entered
  let credential = sessionStorage.getItem(CREDENTIAL_KEY) || "";

  // ------------------------------------------------------------------ the pad

  function redraw() {
    ink.fillStyle = "#000";
    ink.fillRect(0, 0, pad.width, pad.height);
    if (background) {
      const scale = Math.min(pad.width / background.width, pad.height / background.height);
      const w = background.width * scale;
      const h = background.height * scale;
      ink.drawImage(background, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    }
    ink.strokeStyle = "#fff";
    ink.fillStyle = "#fff";
    ink.lineWidth = BRUSH;
    ink.lineCap = "round";
    ink.lineJoin = "round";
    for (const stroke of strokes) {
      if (stroke.length === 1) {
        ink.beginPath();
        ink.arc(stroke[0][0], stroke[0][1], BRUSH / 2, 0, 2 * Math.PI);
        ink.fill();
        continue;
      }
      ink.beginPath();
      ink.moveTo(stroke[0][0], stroke[0][1]);
      for (const [x, y] of stroke.slice(1)) ink.lineTo(x, y);
      ink.stroke();
    }
  }

  function padPoint(event) {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
  }

  function changed() {
    version += 1;
    pad.dataset.version = String(version);
    clearTimeout(timer);
    timer = null;
  }

  pad.addEventListener("pointerdown", (event) => {
    if (activePointer !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    activePointer = event.pointerId;
    pad.setPointerCapture(event.pointerId);
    current = [padPoint(event)];
    strokes.push(current);
    history.push({ kind: "stroke" });
    changed();
    result.setAttribute("aria-busy", "true");
    redraw();
  });

  pad.addEventListener("pointermove", (event) => {
    if (event.pointerId !== activePointer) return;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const each of events.length ? events : [event]) current.push(padPoint(each));
    redraw();
  });

  function endStroke(event) {
    if (event.pointerId !== activePointer) return;
    activePointer = null;
    current = null;
    changed();
    scheduleClassify();
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  function scheduleClassify() {
    result.setAttribute("aria-busy", "true");
    setStatus("Classifying…");
    timer = setTimeout(classifyPad, CLASSIFY_DELAY_MS);
  }

  function undo() {
    const step = history.pop();
    if (!step) return;
    if (step.kind === "stroke") strokes.pop();
    else ({ background, strokes } = step.previous);
    changed();
    redraw();
    if (strokes.length || background) scheduleClassify();
    else showEmpty();
  }

  function clearPad() {
    background = null;
    strokes = [];
    history = [];
    changed();
    redraw();
    showEmpty();
  }

  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", clearPad);
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && !event.shiftKey && event.key.toLowerCase() === "z"
        && !(event.target instanceof HTMLInputElement)) {
      event.preventDefault();
      undo();
    }
  });

  // ------------------------------------------------------------------ files: picked or dropped

  async function useFile(file) {
    if (!file) return;
    // Everything that says "a new input is on its way" happens before the first await, so nothing (a person or a
    // test) can read the previous answer as this file's.
    history.push({ kind: "image", previous: { background, strokes } });
    strokes = [];
    changed();
    const forVersion = version;
    result.setAttribute("aria-busy", "true");
    setStatus(`Classifying ${file.name}…`);
    const bytes = file.arrayBuffer();
    let bitmap = null;
    try {
      bitmap = await createImageBitmap(file);
    } catch {
      bitmap = null; // not an image this browser can show; the server says what is wrong with it
    }
    if (forVersion !== version) return; // the pad changed meanwhile
    background = bitmap;
    redraw();
    // The file's own bytes, not the pad: the server judges exactly what was dropped.
    send(await bytes, "application/octet-stream", forVersion);
  }

  $("file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    event.target.value = ""; // the same file picked again is a change too
    useFile(file);
  });

  const dropZone = $("drop-zone");
  for (const type of ["dragenter", "dragover"]) {
    dropZone.addEventListener(type, (event) => {
      event.preventDefault();
      dropZone.classList.add("dragging");
    });
  }
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("dragging");
    useFile(event.dataTransfer.files[0]);
  });
  // A file dropped beside the pad must not make the browser leave the page to open it.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());

  // ------------------------------------------------------------------ the server

  function classifyPad() {
    timer = null;
    if (!strokes.length && !background) return showEmpty();
    const forVersion = version;
    pad.toBlob((blob) => send(blob, "image/png", forVersion), "image/png");
  }

  async function send(body, type, forVersion) {
    lastRequest = { body, type, version: forVersion };
    const headers = { "Content-Type": type };
    if (credential) headers.Authorization = `Bearer ${credential}`;
    let response;
    let answer = null;
    try {
      response = await fetch(endpoint, { method: "POST", headers, body, cache: "no-store", credentials: "omit" });
      answer = await response.json().catch(() => null);
    } catch (error) {
      if (forVersion === version) showError("The page could not reach the server:", error.message);
      return;
    }
    if (forVersion !== version) return; // the pad changed meanwhile: a newer answer is on its way
    if (response.status === 401) {
      askForCredential(answer && answer.message);
      showError("The gateway asks for a credential:", (answer && answer.message) || "HTTP 401");
      return;
    }
    if (!response.ok || !answer) {
      const message = answer && typeof answer.message === "string" ? answer.message : `HTTP ${response.status}`;
      showError("The server refused it:", message);
      return;
    }
    showAnswer(answer);
  }

  // ------------------------------------------------------------------ the credential (only when asked)

  const credentialForm = $("credential-form");

  function askForCredential() {
    credentialForm.hidden = false;
    $("credential-why").textContent = credential
      ? "The gateway did not accept this credential. Enter another one."
      : "This gateway asks for a credential. Its operator gives it out; the page sends it as "
        + "\u201cAuthorization: Bearer \u2026\u201d to this site only.";
    $("credential").focus();
  }

  credentialForm.addEventListener("submit", (event) => {
    event.preventDefault();
    credential = $("credential").value.trim();
    if ($("credential-remember").checked) sessionStorage.setItem(CREDENTIAL_KEY, credential);
    else sessionStorage.removeItem(CREDENTIAL_KEY);
    $("credential").value = "";
    credentialForm.hidden = true;
    if (lastRequest && lastRequest.version === version) {
      result.setAttribute("aria-busy", "true");
      setStatus("Classifying…");
      send(lastRequest.body, lastRequest.type, lastRequest.version);
    }
  });

  $("credential-forget").addEventListener("click", () => {
    credential = "";
    sessionStorage.removeItem(CREDENTIAL_KEY);
    $("credential").value = "";
  });

  // ------------------------------------------------------------------ showing answers

  function setStatus(text) {
    $("status").textContent = text;
  }

  function finished() {
    result.dataset.version = String(version);
    result.setAttribute("aria-busy", "false");
  }

  function hideError() {
    $("error").hidden = true;
    $("error-message").textContent = "";
  }

  function showError(source, message) {
    clearAnswer();
    $("error-source").textContent = source;
    $("error-message").textContent = message;
    $("error").hidden = false;
    setStatus("No answer.");
    finished();
  }

  function showEmpty() {
    clearAnswer();
    hideError();
    setStatus("Draw a digit to start.");
    finished();
  }

  function clearAnswer() {
    $("label").textContent = "–";
    $("probability").textContent = "";
    $("topk").replaceChildren();
    for (const id of ["seen", "heatmap"]) {
      const canvas = $(id);
      canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
      delete canvas.dataset.drawn;
    }
    $("method").textContent = "attributions";
  }

  const percent = (p) => `${(100 * p).toFixed(1)}%`;

  function showAnswer(answer) {
    clearAnswer();
    hideError();
    $("label").textContent = answer.label;
    $("probability").textContent = percent(answer.probability);
    const items = (answer.topk || [answer]).map((entry) => {
      const item = document.createElement("li");
      const digit = document.createElement("span");
      digit.className = "digit";
      digit.textContent = entry.label;
      const track = document.createElement("span");
      track.className = "track";
      track.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = percent(entry.probability); // CSSOM, allowed by the CSP (no inline style attribute)
      track.append(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = percent(entry.probability);
      item.append(digit, track, value);
      return item;
    });
    $("topk").replaceChildren(...items);
    if (isFrame(answer.image)) drawFrame($("seen"), answer.image);
    if (isFrame(answer.image) && isFrame(answer.attributions)) {
      drawHeatmap($("heatmap"), answer.image, answer.attributions);
      $("method").textContent = (answer.method || "attributions").replaceAll("_", " ");
    } else {
      $("method").textContent = "none in this answer";
    }
    setStatus(`The model says ${answer.label} (${percent(answer.probability)}).`);
    finished();
  }

  const isFrame = (rows) => Array.isArray(rows) && rows.length > 0 && rows.every(Array.isArray);

  function drawFrame(canvas, image) {
    const height = image.length;
    const width = image[0].length;
    canvas.width = width;
    canvas.height = height;
    const pixels = new ImageData(width, height);
    image.forEach((row, y) => row.forEach((value, x) => {
      const grey = Math.round(255 * Math.min(1, Math.max(0, value)));
      pixels.data.set([grey, grey, grey, 255], 4 * (y * width + x));
    }));
    canvas.getContext("2d").putImageData(pixels, 0, 0);
    canvas.dataset.drawn = "true";
  }

  // The digit dimmed in grey, red where a pixel spoke for the answer, blue where it spoke against it; the
  // strongest attribution (either sign) is full colour.
  function drawHeatmap(canvas, image, attributions) {
    const height = attributions.length;
    const width = attributions[0].length;
    canvas.width = width;
    canvas.height = height;
    let strongest = 0;
    for (const row of attributions) for (const value of row) strongest = Math.max(strongest, Math.abs(value));
    const pixels = new ImageData(width, height);
    attributions.forEach((row, y) => row.forEach((value, x) => {
      const grey = 90 * Math.min(1, Math.max(0, (image[y] || [])[x] || 0));
      const weight = strongest > 0 ? Math.sqrt(Math.abs(value) / strongest) : 0;
      const [r, g, b] = value > 0 ? [230, 30, 30] : [40, 80, 240];
      pixels.data.set([grey + (r - grey) * weight, grey + (g - grey) * weight, grey + (b - grey) * weight, 255],
        4 * (y * width + x));
    }));
    canvas.getContext("2d").putImageData(pixels, 0, 0);
    canvas.dataset.drawn = "true";
  }

  redraw();
})();
