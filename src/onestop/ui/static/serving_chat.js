// The chat playground of /deploy/chat: streams replies through the app from the deployment's OpenAI API,
// runs the tool calls the model makes, records ratings, and keeps the openai SDK snippet in step.
(function () {
  const root = document.getElementById("playground");
  if (!root) return;
  const name = root.dataset.name;
  const query = "?name=" + encodeURIComponent(name);
  const transcript = document.getElementById("transcript");
  const busy = document.getElementById("busy");
  let conversation = [];
  let schemas = [];
  let schemasLoading = Promise.resolve();  // a message sent while tools load waits for them

  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const newId = () => (window.crypto && crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random());
  const toolNames = () => [...document.querySelectorAll("input[name=tool]:checked")].map(box => box.value);
  const settings = () => ({
    temperature: parseFloat(document.getElementById("temperature").value),
    top_p: parseFloat(document.getElementById("top_p").value),
    max_tokens: parseInt(document.getElementById("max_tokens").value, 10),
  });
  function messages() {
    const system = document.getElementById("system").value.trim();
    return system ? [{ role: "system", content: system }, ...conversation] : [...conversation];
  }

  function bubble(role, text) {
    const box = el("div", "msg " + role);
    box.appendChild(el("div", "role", role));
    const body = el("div", "content", text || "");
    box.appendChild(body);
    transcript.appendChild(box);
    return box;
  }
  function showCall(box, call) {
    const shown = el("div", "tool-call");
    shown.appendChild(el("span", "label", "tool call"));
    shown.appendChild(el("code", "", `${call.function.name}(${call.function.arguments})`));
    box.appendChild(shown);
  }
  function showError(text) { bubble("error", text); }

  function refreshSchemas() {
    const names = toolNames();
    schemasLoading = (async () => {
      schemas = names.length ? (await (await fetch("/deploy/tools/schemas?tools=" + names.join(","))).json()).tools : [];
      snippet();
    })();
  }
  async function snippet() {
    const body = { messages: messages(), settings: settings(), tools: toolNames(), tool_schemas: schemas };
    const reply = await fetch("/deploy/snippet" + query, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    if (reply.ok) document.getElementById("snippet").textContent = (await reply.json()).code;
  }

  // One streamed reply: content deltas appended as they arrive, tool-call deltas merged by index.
  async function respond() {
    await schemasLoading;
    const prompt = messages();
    const body = { messages: prompt, stream: true, ...settings() };
    if (schemas.length) body.tools = schemas;
    busy.textContent = "answering…";
    const box = bubble("assistant", "");
    const content = box.querySelector(".content");
    let text = "", calls = {}, failed = null;
    try {
      const reply = await fetch("/deploy/chat/completions" + query, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      if (!reply.ok || !(reply.headers.get("content-type") || "").includes("text/event-stream")) {
        const data = await reply.json().catch(() => ({}));
        throw new Error((data.error && data.error.message) || data.detail || `HTTP ${reply.status}`);
      }
      const reader = reply.body.getReader(), decoder = new TextDecoder();
      let pending = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += decoder.decode(value, { stream: true });
        const events = pending.split("\n\n");
        pending = events.pop();
        for (const event of events) {
          const line = event.trim();
          if (!line.startsWith("data:") || line === "data: [DONE]") continue;
          const payload = JSON.parse(line.slice(5));
          if (payload.error) { failed = payload.error.message || String(payload.error); continue; }
          for (const choice of payload.choices || []) {
            const delta = choice.delta || {};
            if (delta.content) { text += delta.content; content.textContent = text; }
            for (const part of delta.tool_calls || []) {
              const call = calls[part.index || 0] || (calls[part.index || 0] = { id: null, type: "function", function: { name: "", arguments: "" } });
              call.id = part.id || call.id;
              if (part.function) {
                call.function.name += part.function.name || "";
                call.function.arguments += typeof part.function.arguments === "string" ? part.function.arguments : JSON.stringify(part.function.arguments || {});
              }
            }
          }
        }
      }
    } catch (error) { failed = error.message; }
    busy.textContent = "";
    if (failed) { box.remove(); showError(failed); return; }
    const message = { role: "assistant", content: text };
    const toolCalls = Object.keys(calls).sort().map(index => calls[index]);
    if (toolCalls.length) message.tool_calls = toolCalls;
    conversation.push(message);
    toolCalls.forEach(call => showCall(box, call));
    feedbackControls(box, prompt, message);
    if (toolCalls.length) runToolsButton(box, toolCalls);
    snippet();
  }

  function runToolsButton(box, calls) {
    const button = el("button", "secondary run-tools", "Run the tools and continue");
    button.type = "button";
    button.addEventListener("click", async () => {
      button.disabled = true;
      const reply = await fetch("/deploy/tools/run", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ tools: toolNames(), calls }) });
      const data = await reply.json();
      if (!reply.ok) { showError(data.detail || "the tools could not run"); return; }
      for (const result of data.results) {
        conversation.push(result);
        const shown = bubble("tool", result.content);
        shown.querySelector(".role").textContent = "tool result";
      }
      await respond();
    });
    box.appendChild(button);
  }

  function feedbackControls(box, prompt, reply) {
    const id = newId();
    const row = el("div", "feedback");
    const correction = el("textarea", "correction");
    correction.rows = 2;
    correction.placeholder = "Corrected answer (optional)";
    const status = el("span", "muted feedback-status");
    for (const rating of ["good", "bad"]) {
      const button = el("button", "secondary rate-" + rating, rating === "good" ? "Good" : "Bad");
      button.type = "button";
      button.addEventListener("click", async () => {
        const body = { reply_id: id, messages: prompt, reply, rating, correction: correction.value, tools: schemas.length ? schemas : null };
        const answer = await fetch("/deploy/feedback" + query, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
        const data = await answer.json();
        if (!answer.ok) { status.textContent = data.error || "not saved"; return; }
        status.textContent = `saved: ${rating}${correction.value.trim() ? " with a correction" : ""}`;
        document.getElementById("feedback-sizes").textContent =
          `${data.sizes.messages} conversation(s) to train on, ${data.sizes.preference} preference pair(s).`;
      });
      row.appendChild(button);
    }
    row.appendChild(correction);
    row.appendChild(status);
    box.appendChild(row);
  }

  document.getElementById("ask").addEventListener("submit", async event => {
    event.preventDefault();
    const field = document.getElementById("prompt");
    const text = field.value.trim();
    if (!text) return;
    field.value = "";
    conversation.push({ role: "user", content: text });
    bubble("user", text);
    document.getElementById("send").disabled = true;
    try { await respond(); } finally { document.getElementById("send").disabled = false; }
  });
  document.getElementById("reset").addEventListener("click", () => { conversation = []; transcript.textContent = ""; snippet(); });
  document.querySelectorAll("input[name=tool]").forEach(box => box.addEventListener("change", refreshSchemas));
  for (const id of ["system", "temperature", "top_p", "max_tokens"]) document.getElementById(id).addEventListener("change", snippet);
  snippet();
})();
