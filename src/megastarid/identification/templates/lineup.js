"use strict";
// The MegaStarID lineup: render the queries from the embedded JSON, keep decisions in localStorage (under
// this lineup's own key), export them as decisions.csv. Every piece of data reaches the DOM through
// textContent or a property, never as markup.
(function () {
  const data = JSON.parse(document.getElementById("lineup-data").textContent);
  const KEY = data.key;
  const DIGITS = "123456789";

  // ---------------------------------------------------------------------------------------------- state
  let saved = { version: 1, decisions: {}, notes: {} };
  let storageOk = true;
  try {
    const raw = window.localStorage.getItem(KEY);
    if (raw) {
      const parsed = JSON.parse(raw);
      if (parsed && typeof parsed === "object") {
        saved.decisions = parsed.decisions || {};
        saved.notes = parsed.notes || {};
      }
    }
  } catch (err) {
    storageOk = false;
  }

  function persist() {
    try {
      window.localStorage.setItem(KEY, JSON.stringify(saved));
    } catch (err) {
      storageOk = false;
    }
    notice();
  }

  function notice(text) {
    const box = document.getElementById("notice");
    const warning = storageOk ? "" :
      "This browser does not let the page keep decisions: export them before you close or reload it.";
    const message = text || warning;
    box.textContent = message;
    box.classList.toggle("warn", Boolean(warning) && !text);
    box.hidden = !message;
  }

  // ------------------------------------------------------------------------------------------- building
  function h(tag, props, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === null || value === undefined) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children || []) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function fileLink(photo, inner) {
    const link = h("a", { target: "_blank", rel: "noopener", title: photo.path }, [inner]);
    if (typeof photo.url === "string" && photo.url.startsWith("file:")) link.href = photo.url;
    return link;
  }

  function image(photo) {
    if (!photo.thumb) return h("div", { class: "nothumb", title: photo.path, text: "no preview" });
    const img = h("img", { alt: photo.name, title: photo.path, loading: "lazy", decoding: "async" });
    img.src = photo.thumb;
    return img;
  }

  // an individual's name, with a line-break opportunity after each "/" (DATASET/individual)
  function identityName(identity) {
    const span = h("span", { class: "identity", title: identity });
    identity.split("/").forEach((part, i, parts) => {
      span.append(part + (i < parts.length - 1 ? "/" : ""));
      if (i < parts.length - 1) span.append(document.createElement("wbr"));
    });
    return span;
  }

  function when(photo) {
    return photo.date || "undated";
  }

  function number(value, digits) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
  }

  const views = new Map(); // query id -> {query, section, cards, buttons ...}

  function buildQuery(query, position) {
    const id = String(query.id);
    const status = h("span", { class: "status" });
    const head = h("div", { class: "qhead" }, [
      h("span", { class: "qnum", text: "#" + position }),
      h("span", { class: "badge verdict-" + query.verdict, text: query.verdict, title: data.verdicts[query.verdict] || "" }),
      h("span", { class: "encounter", text: query.encounter, title: query.encounter }),
      h("span", { class: "qcount", text: query.photos.length === 1 ? "1 photo" : query.photos.length + " photos" }),
      status,
    ]);

    // the query's photos: the first large, the rest in a strip (click one to see it large)
    const large = h("figure", { class: "large" });
    const qname = h("div", { class: "qname" });
    function show(photo) {
      large.replaceChildren(fileLink(photo, image(photo)));
      qname.textContent = photo.name + (photo.date ? " · " + photo.date : "");
      qname.title = photo.path;
    }
    show(query.photos[0]);
    const strip = h("div", { class: "strip" });
    if (query.photos.length > 1) {
      for (const photo of query.photos) {
        const thumb = image(photo);
        thumb.addEventListener("click", () => show(photo));
        strip.append(h("figure", {}, [thumb]));
      }
    }
    const left = h("div", { class: "qphotos" }, [large, qname, strip]);

    // the candidates
    const cards = [];
    const cands = h("div", { class: "cands" });
    for (const cand of query.candidates) {
      const fill = h("div", { class: "fill" });
      fill.style.width = cand.probability === null ? "0%" : (100 * cand.probability).toFixed(1) + "%";
      const metrics = cand.known
        ? h("div", { class: "metrics", text: "this very file is in the catalogue" })
        : h("div", { class: "metrics" }, [
            h("span", { class: "score", text: "score " + number(cand.score, 3), title: "pooled cosine score" }),
            h("div", { class: "prob", title: "calibrated probability that this is the individual" }, [fill]),
            h("span", { class: "p", text: "P " + number(cand.probability, 2) }),
          ]);
      const best = h("figure", { class: "best" }, [
        fileLink(cand.best, image(cand.best)),
        h("figcaption", {
          text: when(cand.best) + (cand.best.outing ? " · " + cand.best.outing : "") +
            (query.photos.length > 1 && cand.best.query_photo ? " · matched on " + cand.best.query_photo.split("/").pop() : ""),
        }),
      ]);
      const others = h("div", { class: "strip" });
      for (const other of cand.others) {
        others.append(h("figure", {}, [fileLink(other, image(other)), h("figcaption", { text: when(other) })]));
      }
      const seen = [];
      if (cand.num_photos !== null) seen.push(cand.num_photos + (cand.num_photos === 1 ? " photo" : " photos"));
      if (cand.first_seen && cand.last_seen) seen.push("seen " + cand.first_seen + " … " + cand.last_seen);
      else if (cand.last_seen) seen.push("last seen " + cand.last_seen);
      const confirm = h("button", { type: "button", class: "confirm", text: "Confirm " + cand.rank, title: "key " + cand.rank });
      confirm.addEventListener("click", () => decide(id, { decision: "confirm", rank: cand.rank, identity: cand.identity }));
      const card = h("div", { class: "cand", dataset: { rank: String(cand.rank) } }, [
        h("div", { class: "chead" }, [
          h("span", { class: "rank", text: String(cand.rank) }),
          identityName(cand.identity),
        ]),
        best,
        metrics,
        others,
        h("div", { class: "seen", text: seen.join(" · ") }),
        confirm,
      ]);
      cards.push({ cand, card, confirm });
      cands.append(card);
    }
    if (!query.candidates.length) cands.append(h("p", { class: "empty", text: "no candidates" }));

    // the other decisions and the note
    const newButton = h("button", { type: "button", class: "new", text: "New individual", title: "key n" });
    const name = h("input", { type: "text", class: "name", placeholder: "name (optional)", "aria-label": "new individual's name" });
    const unsure = h("button", { type: "button", class: "unsure", text: "Unsure", title: "key u" });
    const note = h("input", { type: "text", class: "note", placeholder: "note", "aria-label": "note" });
    const clear = h("button", { type: "button", class: "clear", text: "Clear", title: "key x" });
    newButton.addEventListener("click", () => decide(id, { decision: "new", name: name.value.trim() }));
    unsure.addEventListener("click", () => decide(id, { decision: "unsure" }));
    clear.addEventListener("click", () => undecide(id));
    name.addEventListener("input", () => {
      const current = saved.decisions[id];
      if (current && current.decision === "new") {
        current.name = name.value.trim();
        persist();
        render(id);
      }
    });
    name.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        decide(id, { decision: "new", name: name.value.trim() });
        name.blur();
        move(1);
      }
    });
    note.value = saved.notes[id] || "";
    note.addEventListener("input", () => {
      if (note.value) saved.notes[id] = note.value;
      else delete saved.notes[id];
      persist();
    });
    note.addEventListener("keydown", (event) => {
      if (event.key === "Enter") note.blur();
    });
    const decided = saved.decisions[id];
    if (decided && decided.decision === "new") name.value = decided.name || "";
    const actions = h("div", { class: "qactions" }, [newButton, name, unsure, note, clear]);

    const section = h("section", {
      class: "query",
      id: "q-" + id,
      tabindex: "-1",
      dataset: { verdict: query.verdict, query: id },
      "aria-label": "query " + position,
    }, [head, h("div", { class: "qbody" }, [left, cands]), actions]);
    section.addEventListener("mousedown", () => select(id, false));
    views.set(id, { query, section, cards, status, newButton, unsure, name, note });
    return section;
  }

  // ------------------------------------------------------------------------------------------ decisions
  function decide(id, decision) {
    const record = Object.assign({ decision: decision.decision }, decision, { time: new Date().toISOString() });
    saved.decisions[id] = record;
    persist();
    render(id);
    select(id, false);
  }

  function undecide(id) {
    delete saved.decisions[id];
    persist();
    render(id);
  }

  function identityOf(record) {
    if (record.decision === "confirm") return record.identity || "";
    if (record.decision === "new") return record.name || "";
    return "";
  }

  function render(id) {
    const view = views.get(id);
    const record = saved.decisions[id];
    view.section.classList.toggle("decided", Boolean(record));
    if (record) view.section.dataset.decision = record.decision;
    else delete view.section.dataset.decision;
    for (const { cand, card, confirm } of view.cards) {
      const chosen = Boolean(record && record.decision === "confirm" && record.rank === cand.rank);
      card.classList.toggle("chosen", chosen);
      confirm.setAttribute("aria-pressed", String(chosen));
    }
    view.newButton.setAttribute("aria-pressed", String(Boolean(record && record.decision === "new")));
    view.unsure.setAttribute("aria-pressed", String(Boolean(record && record.decision === "unsure")));
    if (!record) view.status.textContent = "undecided";
    else if (record.decision === "confirm") view.status.textContent = "✓ confirmed " + record.identity;
    else if (record.decision === "new") view.status.textContent = "★ new individual " + (record.name || "(name made on apply)");
    else view.status.textContent = "? unsure";
    progress();
    applyFilters();
  }

  function progress() {
    const total = data.queries.length;
    const done = data.queries.filter((q) => saved.decisions[String(q.id)]).length;
    document.getElementById("progress").textContent = done + " of " + total + " decided";
  }

  // -------------------------------------------------------------------------------------------- export
  // a cell that starts like a formula (= + - @ tab CR, after any quotes) is marked as text with a leading ',
  // as megastarid.core.files.spreadsheet_text does, so no spreadsheet runs it; plain numbers stay
  function spreadsheetText(text) {
    const formula = /^'*[=+\-@\t\r]/.test(text);
    return formula && !/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(text) ? "'" + text : text;
  }

  function csvField(value) {
    const text = spreadsheetText(value === null || value === undefined ? "" : String(value));
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function decisionsCsv() {
    const lines = [data.columns.join(",")];
    let queries = 0;
    const inOrder = data.queries.slice().sort((a, b) => a.id - b.id);
    for (const query of inOrder) {
      const record = saved.decisions[String(query.id)];
      if (!record) continue;
      queries += 1;
      const note = saved.notes[String(query.id)] || "";
      for (const photo of query.photos) {
        // ref: the path, or for a name that is not UTF-8 its file: URI (a lone surrogate would export as U+FFFD)
        const row = { query: photo.ref, encounter: query.encounter_ref, decision: record.decision,
          identity: identityOf(record), note: note, time: record.time, query_id: query.id };
        lines.push(data.columns.map((column) => csvField(row[column])).join(","));
      }
    }
    return { text: lines.join("\n") + "\n", queries: queries, rows: lines.length - 1 };
  }

  function exportDecisions() {
    const csv = decisionsCsv();
    if (!csv.queries) {
      notice("Nothing decided yet: nothing to export.");
      return;
    }
    const blob = new Blob([csv.text], { type: "text/csv;charset=utf-8" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = data.decisions_file;
    document.body.append(link);
    link.click();
    setTimeout(() => {
      URL.revokeObjectURL(link.href);
      link.remove();
    }, 1000);
    notice("Exported " + csv.queries + " decision(s), " + csv.rows + " photo row(s), to " + data.decisions_file +
      ": run megastarid catalogue apply --decisions " + data.decisions_file);
  }

  // ------------------------------------------------------------------------------- filters, navigation
  const filters = new Set(data.verdict_order.concat(data.queries.map((q) => q.verdict)));
  let undecidedOnly = false;

  function visible(view) {
    return filters.has(view.query.verdict) && !(undecidedOnly && saved.decisions[String(view.query.id)]);
  }

  function applyFilters() {
    for (const view of views.values()) view.section.hidden = !visible(view);
    for (const button of document.querySelectorAll("#filters button.filter")) {
      const verdict = button.dataset.verdict;
      const on = verdict === "*" ? data.queries.every((q) => filters.has(q.verdict)) : filters.has(verdict);
      button.setAttribute("aria-pressed", String(on));
    }
  }

  for (const button of document.querySelectorAll("#filters button.filter")) {
    button.addEventListener("click", () => {
      const verdict = button.dataset.verdict;
      if (verdict === "*") {
        for (const q of data.queries) filters.add(q.verdict);
      } else if (filters.has(verdict)) {
        filters.delete(verdict);
      } else {
        filters.add(verdict);
      }
      applyFilters();
    });
  }
  document.getElementById("undecided-only").addEventListener("change", (event) => {
    undecidedOnly = event.target.checked;
    applyFilters();
  });
  document.getElementById("export").addEventListener("click", exportDecisions);

  let current = null;

  function select(id, scroll) {
    if (current !== null && views.has(current)) views.get(current).section.classList.remove("current");
    current = id;
    const view = views.get(id);
    view.section.classList.add("current");
    if (scroll) {
      view.section.scrollIntoView({ block: "nearest" });
      view.section.focus({ preventScroll: true });
    }
  }

  function move(step) {
    const shown = Array.from(views.values()).filter(visible).map((view) => String(view.query.id));
    if (!shown.length) return;
    const at = shown.indexOf(current);
    const next = at < 0 ? (step > 0 ? 0 : shown.length - 1) : Math.min(Math.max(at + step, 0), shown.length - 1);
    select(shown[next], true);
  }

  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if ((event.ctrlKey || event.metaKey) && !event.altKey && event.key.toLowerCase() === "s") {
      event.preventDefault(); // export, even while typing a name or a note
      exportDecisions();
      return;
    }
    if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement) {
      if (event.key === "Escape") target.blur();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "?") {
      const help = document.getElementById("help");
      help.open = !help.open;
      return;
    }
    if (event.key === "j" || event.key === "k") {
      event.preventDefault();
      move(event.key === "j" ? 1 : -1);
      return;
    }
    if (current === null) {
      if (DIGITS.includes(event.key) || "nuxe".includes(event.key)) move(1);
      if (current === null) return;
    }
    const view = views.get(current);
    if (DIGITS.includes(event.key)) {
      const rank = Number(event.key);
      const hit = view.cards.find(({ cand }) => cand.rank === rank);
      if (!hit) return;
      event.preventDefault();
      decide(current, { decision: "confirm", rank: rank, identity: hit.cand.identity });
      move(1);
    } else if (event.key === "n") {
      event.preventDefault();
      decide(current, { decision: "new", name: view.name.value.trim() });
      view.name.focus();
    } else if (event.key === "u") {
      event.preventDefault();
      decide(current, { decision: "unsure" });
      move(1);
    } else if (event.key === "x") {
      event.preventDefault();
      undecide(current);
    } else if (event.key === "e") {
      event.preventDefault();
      view.note.focus();
    }
  });

  // ------------------------------------------------------------------------------------------- render
  const main = document.getElementById("queries");
  if (!data.queries.length) main.append(h("p", { class: "empty", text: "No queries in this lineup." }));
  data.queries.forEach((query, i) => main.append(buildQuery(query, i + 1)));
  for (const id of views.keys()) render(id);
  if (data.unreadable.length) {
    const box = document.getElementById("unreadable");
    const list = box.querySelector("ul");
    for (const lost of data.unreadable) list.append(h("li", { text: lost.path }));
    box.hidden = false;
  }
  progress();
  notice();
})();
