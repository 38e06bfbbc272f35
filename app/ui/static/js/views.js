// The pages. Each builds its frame once and refreshes its figures with ctx.live (a poll, faster while
// something is still moving), so a filter being typed in is never redrawn under the user.

import { all, call, query } from "./api.js";
import { lineChart } from "./chart.js";
import { ago, age, append, badge, bytes, duration, empty, fill, h, jsonBlock, link, progressBar, table } from "./dom.js";

const STATUSES = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled"];
const ENDED = new Set(["succeeded", "failed", "cancelled"]);
const FAST = 1500;
const SLOW = 5000;

const jobHref = (id) => `#/jobs/${encodeURIComponent(id)}`;
const batchHref = (id) => `#/batches/${encodeURIComponent(id)}`;

function heading(text, ...extra) {
  return h("div", { class: "heading" }, h("h1", {}, text), extra);
}

function jobProgress(job) {
  const p = job.progress;
  if (p && p.total) {
    return progressBar(p.fraction ?? p.done / p.total, `${p.done}/${p.total}`);
  }
  if (ENDED.has(job.status)) return h("span", { class: "muted" }, "—");
  return h("span", { class: "muted" }, p && p.message ? p.message : "—");
}

function pager(ctx, base, nextCursor) {
  const params = new URLSearchParams(ctx.params);
  const links = [];
  if (params.get("cursor")) {
    params.delete("cursor");
    links.push(link(`${base}${query(Object.fromEntries(params))}`, "← First page"));
  }
  if (nextCursor) {
    params.set("cursor", nextCursor);
    links.push(link(`${base}${query(Object.fromEntries(params))}`, "Next page →"));
  }
  return links;
}

// ---- jobs -----------------------------------------------------------------------------------------------------

function jobsPage(main, ctx) {
  const f = { status: ctx.params.get("status") || "", kind: ctx.params.get("kind") || "",
              model: ctx.params.get("model") || "" };
  const status = h("select", { name: "status", id: "filter-status" }, h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === f.status }, s)));
  const kind = h("select", { name: "kind", id: "filter-kind" }, h("option", { value: "" }, "any kind"));
  const model = h("input", { name: "model", id: "filter-model", list: "model-names", placeholder: "any model",
                             value: f.model, autocomplete: "off" });
  const models = h("datalist", { id: "model-names" });
  const form = h("form", { class: "filters", id: "job-filters" },
    h("label", {}, "Status ", status), h("label", {}, "Kind ", kind), h("label", {}, "Model ", model), models,
    h("button", { type: "submit" }, "Filter"), link("#/jobs", "Clear"));
  const apply = (ev) => {
    if (ev) ev.preventDefault();
    location.hash = `#/jobs${query({ status: status.value, kind: kind.value, model: model.value.trim() })}`;
  };
  form.addEventListener("submit", apply);
  status.addEventListener("change", apply);
  kind.addEventListener("change", apply);
  const body = h("tbody", {});
  const pages = h("nav", { class: "pager" });
  const updated = h("span", { class: "muted updated" });
  main.append(heading("Jobs", updated), form,
    h("table", { id: "jobs" }, h("thead", {}, h("tr", {},
      ["ID", "Kind", "Model", "Status", "Progress", "Created", "Took"].map((x) => h("th", {}, x)))), body),
    pages);

  call("/kinds", { signal: ctx.signal }).then((r) => {
    for (const k of r.data) kind.append(h("option", { value: k.id, selected: k.id === f.kind }, k.id));
    if (f.kind && !r.data.some((k) => k.id === f.kind)) kind.append(h("option", { value: f.kind, selected: true }, f.kind));
  }).catch(ctx.failed);
  call("/models?limit=100", { signal: ctx.signal }).then((r) => {
    for (const m of r.data) models.append(h("option", { value: m.id }));
  }).catch(ctx.failed);

  ctx.live(async () => {
    const r = await call(`/jobs${query({ ...f, limit: 50, cursor: ctx.params.get("cursor") })}`, { signal: ctx.signal });
    fill(body, ...(r.data.length ? r.data.map((j) => h("tr", { "data-id": j.id, "data-status": j.status },
      h("td", {}, link(jobHref(j.id), j.id)), h("td", {}, j.kind), h("td", {}, j.model || "—"),
      h("td", {}, badge(j.status)), h("td", {}, jobProgress(j)), h("td", {}, ago(j.created_at)),
      h("td", {}, j.started_at ? duration(j.started_at, j.finished_at) : "—"))) : [empty(7, "No jobs match.")]));
    fill(pages, ...pager(ctx, "#/jobs", r.next_cursor));
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    return r.data.some((j) => !ENDED.has(j.status)) ? FAST : SLOW;
  });
}

// ---- one job: summary, output, usage, timeline; a fine-tune's loss curve and checkpoints ------------------------

function dl(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(([, v]) => v !== undefined).flatMap(([k, v]) => [
    h("dt", {}, k), h("dd", {}, v === null || v === "" ? h("span", { class: "muted" }, "—") : v)]));
}

function section(title, id, ...content) {
  return h("section", { class: "card", id }, h("h2", {}, title), content);
}

function outputView(job) {
  const out = job.output;
  if (out === null || out === undefined) {
    return h("p", { class: "muted" }, ENDED.has(job.status) ? "No output." : "Not finished yet.");
  }
  if (typeof out.text === "string") {
    return [h("pre", { class: "text", id: "output-text" }, out.text),
      out.finish_reason ? h("p", { class: "muted" }, `finish_reason: ${out.finish_reason}`) : null,
      h("details", {}, h("summary", {}, "JSON"), jsonBlock(out))];
  }
  return jsonBlock(out);
}

function usageView(usage) {
  if (!usage || !Object.keys(usage).length) return h("p", { class: "muted" }, "No usage recorded.");
  return dl(Object.entries(usage).map(([k, v]) => [k, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)]));
}

// `open`: ids of the events whose data the user has unfolded (kept open across refreshes)
function timelineView(events, open) {
  if (!events.length) return h("p", { class: "muted" }, "No events yet.");
  return h("ol", { class: "timeline", id: "timeline" }, events.map((e) => h("li", { "data-type": e.type, "data-id": e.id },
    h("time", { datetime: e.created_at, title: e.created_at }, new Date(e.created_at).toLocaleTimeString()),
    h("span", { class: `etype t-${String(e.type).replace(/[^a-z_]/g, "")}` }, e.type),
    h("span", { class: "emsg" }, e.message || ""),
    e.data && Object.keys(e.data).length
      ? h("details", { open: open.has(e.id) }, h("summary", {}, "data"), jsonBlock(e.data)) : null)));
}

// the loss curve: progress events carry step and train_loss (and valid_loss when validated); an encoder's
// metrics events carry valid_loss at an epoch's end
export function lossSeries(events) {
  const train = new Map();
  const valid = new Map();
  for (const e of events) {
    const d = e.data || {};
    const step = Number(d.step ?? (e.type === "progress" ? d.done : NaN));
    if (!Number.isFinite(step)) continue;
    if (typeof d.train_loss === "number" && Number.isFinite(d.train_loss)) train.set(step, d.train_loss);
    if (typeof d.valid_loss === "number" && Number.isFinite(d.valid_loss)) valid.set(step, d.valid_loss);
  }
  return [{ name: "train_loss", cls: "train", points: [...train] }, { name: "valid_loss", cls: "valid", points: [...valid] }];
}

function checkpointsView(rows) {
  const fmt = (v) => (typeof v === "number" ? v.toFixed(4) : "—");
  return table(["ID", "Step", "Epoch", "Reason", "train_loss", "valid_loss", "Saved"],
    rows.length ? rows.map((c) => h("tr", { "data-id": c.id },
      h("td", {}, c.id), h("td", {}, `${c.step}/${c.total_steps ?? "?"}`), h("td", {}, c.epoch ?? "—"),
      h("td", {}, c.reason || "—"), h("td", {}, fmt(c.metrics.train_loss)), h("td", {}, fmt(c.metrics.valid_loss)),
      h("td", {}, ago(c.created_at)))) : [empty(7, "No checkpoints yet.")], { id: "checkpoints-table" });
}

function jobPage(main, ctx) {
  const id = ctx.id;
  const head = h("div", { class: "heading" });
  const summary = h("div", { class: "card", id: "job-summary" });
  const output = section("Output", "output");
  const usage = section("Usage", "usage");
  const loss = section("Loss curve", "loss-curve");
  const ckpts = section("Checkpoints", "checkpoints");
  const timeline = section("Timeline", "timeline-card");
  const input = section("Input and parameters", "input");
  main.append(head, summary, output, usage, timeline, input);
  let placed = false;
  let cancelling = false;

  const cancel = h("button", { type: "button", id: "cancel-job", class: "danger" }, "Cancel job");
  cancel.addEventListener("click", async () => {
    cancelling = true;
    cancel.disabled = true;
    try {
      await call(`/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST", signal: ctx.signal });
    } catch (err) {
      ctx.failed(err);
      cancel.disabled = false;
    }
  });

  const replace = (sec, ...content) => append(fill(sec, sec.firstChild), content);

  ctx.live(async () => {
    const job = await call(`/jobs/${encodeURIComponent(id)}`, { signal: ctx.signal });
    const events = await all(`/jobs/${encodeURIComponent(id)}/events?order=asc`, { max: 5000, signal: ctx.signal });
    const ended = ENDED.has(job.status);
    cancel.disabled = cancelling || ended || job.status === "cancelling";
    fill(head, h("h1", {}, job.id), badge(job.status), ended ? null : cancel);
    fill(summary, dl([
      ["Kind", job.kind], ["Model", job.model], ["Queue", job.queue], ["GPU", JSON.stringify(job.gpu)],
      ["Priority", String(job.priority)], ["Attempts", String(job.attempts)], ["Worker", job.worker_id],
      ["Batch", job.batch_id ? link(batchHref(job.batch_id), job.batch_id) : null],
      ["Created", ago(job.created_at)], ["Started", ago(job.started_at)], ["Finished", ago(job.finished_at)],
      ["Took", job.started_at ? duration(job.started_at, job.finished_at) : null],
    ]), job.progress && job.progress.total ? h("div", { class: "job-progress" }, jobProgress(job),
      h("span", { class: "muted" }, job.progress.message || "")) : null,
    job.error ? h("p", { class: "error", id: "job-error" }, `${job.error.code}: ${job.error.message}`) : null,
    Object.keys(job.metadata || {}).length ? h("p", { class: "muted" }, `metadata: ${JSON.stringify(job.metadata)}`) : null);
    replace(output, outputView(job));
    replace(usage, usageView(job.usage));
    const open = new Set([...timeline.querySelectorAll("li details[open]")].map((d) => d.parentElement.dataset.id));
    replace(timeline, timelineView(events, open));
    replace(input, h("h3", {}, "input"), jsonBlock(job.input), h("h3", {}, "params"), jsonBlock(job.params));
    if (job.kind === "finetune") {
      if (!placed) {
        output.before(loss, ckpts);
        placed = true;
      }
      replace(loss, lineChart(lossSeries(events), { xLabel: "step", yLabel: "loss", title: `loss of ${job.id}` }));
      const rows = await all(`/jobs/${encodeURIComponent(id)}/checkpoints`, { signal: ctx.signal });
      replace(ckpts, checkpointsView(rows), job.output && job.output.model
        ? h("p", {}, "New model: ", h("code", { id: "finetuned-model" }, job.output.model)) : null);
    }
    return ended ? null : FAST;
  });
}

// ---- batches ----------------------------------------------------------------------------------------------------

function batchProgress(b) {
  const c = b.request_counts || {};
  const label = `${c.completed ?? 0}/${c.total ?? 0} done${c.failed ? `, ${c.failed} failed` : ""}`;
  const bar = progressBar(b.progress ? b.progress.fraction : 0, label);
  if (c.failed) bar.classList.add("has-failed");
  return bar;
}

function batchesPage(main, ctx) {
  const body = h("tbody", {});
  const pages = h("nav", { class: "pager" });
  main.append(heading("Batches"), h("table", { id: "batches" }, h("thead", {}, h("tr", {},
    ["ID", "Status", "Task", "Model", "Progress", "Created", "Took"].map((x) => h("th", {}, x)))), body), pages);
  ctx.live(async () => {
    const r = await call(`/batches${query({ limit: 50, cursor: ctx.params.get("cursor") })}`, { signal: ctx.signal });
    fill(body, ...(r.data.length ? r.data.map((b) => h("tr", { "data-id": b.id, "data-status": b.status },
      h("td", {}, link(batchHref(b.id), b.id)), h("td", {}, badge(b.status)),
      h("td", {}, (b.task && b.task.type) || "—"), h("td", {}, b.model || "—"), h("td", {}, batchProgress(b)),
      h("td", {}, ago(b.created_at)), h("td", {}, b.started_at ? duration(b.started_at, b.finished_at) : "—")))
      : [empty(7, "No batches yet.")]));
    fill(pages, ...pager(ctx, "#/batches", r.next_cursor));
    return r.data.some((b) => !ENDED.has(b.status)) ? FAST : SLOW;
  });
}

function batchPage(main, ctx) {
  const id = ctx.id;
  const head = h("div", { class: "heading" });
  const summary = h("div", { class: "card", id: "batch-summary" });
  const chunks = h("tbody", {});
  main.append(head, summary, h("section", { class: "card" }, h("h2", {}, "Chunks"),
    h("table", { id: "chunks" }, h("thead", {}, h("tr", {},
      ["Job", "Status", "Progress", "Worker", "Took"].map((x) => h("th", {}, x)))), chunks)));
  ctx.live(async () => {
    const b = await call(`/batches/${encodeURIComponent(id)}`, { signal: ctx.signal });
    const jobs = await all(`/jobs?batch_id=${encodeURIComponent(id)}`, { max: 500, signal: ctx.signal });
    fill(head, h("h1", {}, b.id), badge(b.status));
    fill(summary, batchProgress(b), dl([
      ["Task", JSON.stringify(b.task)], ["Model", b.model], ["Queue", b.queue],
      ["Input file", b.input_file_id], ["Output file", b.output_file_id], ["Error file", b.error_file_id],
      ["Created", ago(b.created_at)], ["Started", ago(b.started_at)], ["Finished", ago(b.finished_at)],
    ]), b.error ? h("p", { class: "error" }, `${b.error.code}: ${b.error.message}`) : null);
    fill(chunks, ...(jobs.length ? jobs.map((j) => h("tr", {},
      h("td", {}, link(jobHref(j.id), j.id)), h("td", {}, badge(j.status)), h("td", {}, jobProgress(j)),
      h("td", {}, j.worker_id || "—"), h("td", {}, j.started_at ? duration(j.started_at, j.finished_at) : "—")))
      : [empty(5, "No chunks.")]));
    return ENDED.has(b.status) ? null : FAST;
  });
}

// ---- fine-tunes -------------------------------------------------------------------------------------------------

function finetunesPage(main, ctx) {
  const body = h("tbody", {});
  const pages = h("nav", { class: "pager" });
  main.append(heading("Fine-tunes"), h("p", { class: "muted" }, "Open one for its loss curve and checkpoints."),
    h("table", { id: "finetunes" }, h("thead", {}, h("tr", {},
      ["ID", "Base model", "Status", "Steps", "train_loss", "New model", "Created"].map((x) => h("th", {}, x)))), body),
    pages);
  ctx.live(async () => {
    const r = await call(`/jobs${query({ kind: "finetune", limit: 50, cursor: ctx.params.get("cursor") })}`,
                         { signal: ctx.signal });
    fill(body, ...(r.data.length ? r.data.map((j) => {
      const p = j.progress || {};
      const loss = typeof p.train_loss === "number" ? p.train_loss
        : (j.output && typeof j.output.train_loss === "number" ? j.output.train_loss : null);
      return h("tr", { "data-id": j.id, "data-status": j.status },
        h("td", {}, link(jobHref(j.id), j.id)), h("td", {}, j.model), h("td", {}, badge(j.status)),
        h("td", {}, jobProgress(j)), h("td", {}, loss === null ? "—" : loss.toFixed(4)),
        h("td", {}, (j.output && j.output.model) || "—"), h("td", {}, ago(j.created_at)));
    }) : [empty(7, "No fine-tuning jobs yet.")]));
    fill(pages, ...pager(ctx, "#/finetunes", r.next_cursor));
    return r.data.some((j) => !ENDED.has(j.status)) ? FAST : SLOW;
  });
}

// ---- queues and workers -----------------------------------------------------------------------------------------

function queuesPage(main, ctx) {
  const body = h("tbody", {});
  main.append(heading("Queues"), h("p", { class: "muted" },
    "Every queue with jobs waiting or running, or a live worker consuming it (<kind>.<gpu type>)."),
  h("table", { id: "queues" }, h("thead", {}, h("tr", {},
    ["Queue", "Waiting", "Oldest waiting", "Running", "Live workers"].map((x) => h("th", {}, x)))), body));
  ctx.live(async () => {
    const r = await call("/queues", { signal: ctx.signal });
    fill(body, ...(r.data.length ? r.data.map((q) => h("tr", {
      "data-queue": q.name, class: q.depth && !q.workers ? "warn" : null,
      title: q.depth && !q.workers ? "jobs wait here and no live worker consumes this queue" : null },
    h("td", {}, h("code", {}, q.name)), h("td", { class: "num depth" }, String(q.depth)),
    h("td", { class: "num" }, q.oldest_age_s === null ? "—" : age(q.oldest_age_s)),
    h("td", { class: "num" }, String(q.running)), h("td", { class: "num" }, String(q.workers))))
      : [empty(5, "No queue has jobs or workers.")]));
    return 3000;
  });
}

function workersPage(main, ctx) {
  const holder = h("div", {});
  main.append(heading("Workers"), holder);
  ctx.live(async () => {
    const r = await call("/workers", { signal: ctx.signal });
    const rows = r.data;
    if (!rows.length) {
      fill(holder, h("p", { class: "muted", id: "no-workers" }, "No worker has heart-beaten yet."));
    } else if (rows[0].object === "worker") {
      fill(holder, table(
        ["ID", "Host", "PID", "GPU", "Queues", "Models loaded", "Memory free", "Running", "State", "Heartbeat"],
        rows.map((w) => h("tr", { "data-id": w.id, class: w.alive ? null : "gone" },
          h("td", {}, h("code", {}, w.id)), h("td", {}, w.host), h("td", {}, String(w.pid)),
          h("td", {}, w.gpu_name ? `${w.gpu_type} (${w.gpu_name})` : w.gpu_type),
          h("td", { class: "queues" }, (w.queues || []).join(", ")),
          h("td", {}, (w.models_loaded || []).join(", ") || "—"),
          h("td", {}, w.memory_total_bytes ? `${bytes(w.memory_free_bytes)} / ${bytes(w.memory_total_bytes)}` : "—"),
          h("td", { class: "num" }, String(w.running_jobs)),
          h("td", {}, badge(w.alive ? "alive" : w.stopped_at ? "stopped" : "lost")),
          h("td", {}, ago(w.last_heartbeat_at)))), { id: "workers" }));
    } else {
      fill(holder, h("p", { class: "muted" }, "Capacity by GPU type; an admin key sees each worker."),
        table(["GPU type", "Alive", "Total", "Running jobs"], rows.map((p) => h("tr", { "data-gpu": p.gpu_type },
          h("td", {}, h("code", {}, p.gpu_type)), h("td", { class: "num" }, String(p.alive)),
          h("td", { class: "num" }, String(p.total)), h("td", { class: "num" }, String(p.running_jobs)))),
        { id: "gpu-pools" }));
    }
    return SLOW;
  });
}

export const pages = {
  jobs: (main, ctx) => (ctx.id ? jobPage(main, ctx) : jobsPage(main, ctx)),
  batches: (main, ctx) => (ctx.id ? batchPage(main, ctx) : batchesPage(main, ctx)),
  finetunes: finetunesPage,
  queues: queuesPage,
  workers: workersPage,
};
