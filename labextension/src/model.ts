/**
 * The panel's state: search pages, selection, staging preview, jobs and logs.
 *
 * Only Lumino (UMD bundles) and our own modules are imported, so jest tests
 * these models with a fake ArchiveClient.
 */
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import {
  ApiError,
  ArchiveClient,
  IDryRun,
  IFile,
  IInstance,
  IJob,
  IObservation,
  ISearchReply,
  ISearchRequest,
  ISession,
  JobState,
  SearchKind,
  SearchRow,
  StageMethod,
  StageTarget
} from './service';

// ---------------------------------------------------------------- helpers

/** The message to show for any error. */
export function errorMessage(reason: unknown): string {
  if (reason instanceof Error) {
    return reason.message;
  }
  return String(reason);
}

/** True when an error means the server extension is not there. */
export function isMissing(reason: unknown): boolean {
  return reason instanceof ApiError && reason.missing;
}

/** The key that identifies a row of a given kind. */
export function rowKey(kind: SearchKind, row: SearchRow): string {
  switch (kind) {
    case 'files':
      return (row as IFile).name;
    case 'observations':
      return String((row as IObservation).obsid);
    case 'sessions':
      return String((row as ISession).id);
  }
}

/** The server's sort keys per kind of search (what the column headers offer). */
export const SORT_KEYS: Record<SearchKind, ReadonlyArray<string>> = {
  files: ['name', 'obsid', 'size', 'create_time'],
  observations: ['obsid', 'session_id', 'start_time_jd', 'start_lst_hr'],
  sessions: ['id', 'start_time_jd', 'stop_time_jd']
};

/** `sort` if the kind offers it, else null (the server's default order). */
export function sortFor(kind: SearchKind, sort: string | null): string | null {
  return sort !== null && SORT_KEYS[kind].includes(sort.replace(/^-/, '')) ? sort : null;
}

/** Whether two search bodies ask the same thing (same query, kind and sort). */
export function sameSearch(a: ISearchRequest | null, b: ISearchRequest | null): boolean {
  if (!a || !b) {
    return a === b;
  }
  return (
    (a.kind ?? 'files') === (b.kind ?? 'files') &&
    (a.sort ?? null) === (b.sort ?? null) &&
    (a.query ?? null) === (b.query ?? null) &&
    JSON.stringify(a.search ?? null) === JSON.stringify(b.search ?? null)
  );
}

/** A search body as a person reads it: the query text, or the JSON. */
export function describeSearch(body: ISearchRequest): string {
  if (body.search !== undefined) {
    return typeof body.search === 'string' ? body.search : JSON.stringify(body.search);
  }
  return body.query ?? '';
}

/**
 * The next server `sort` after clicking a column header: ascending, then
 * descending, then back to the server's default order (null).
 */
export function nextSort(current: string | null, column: string): string | null {
  if (current === column) {
    return `-${column}`;
  }
  if (current === `-${column}`) {
    return null;
  }
  return column;
}

/** The direction a column is sorted in by `sort`, for aria-sort. */
export function sortDirection(
  sort: string | null,
  column: string
): 'ascending' | 'descending' | 'none' {
  if (sort === column) {
    return 'ascending';
  }
  if (sort === `-${column}`) {
    return 'descending';
  }
  return 'none';
}

/** The badge a copy whose fixity check failed shows ("bad copy", "missing"); null if none. */
export function fixityBadge(inst: IInstance): string | null {
  if (inst.fixity === 'bad') {
    return 'bad copy';
  }
  return inst.fixity === 'missing' ? 'missing' : null;
}

/** Whether a copy can be staged from: available and not found bad or missing. */
export function isGoodCopy(inst: IInstance): boolean {
  return inst.available && fixityBadge(inst) === null;
}

/**
 * Where a file has instances, e.g. "onsite, offsite" (unavailable, bad and missing copies
 * marked), led by "no good copy:" when none of them can be staged from.
 */
export function whereText(file: IFile): string {
  const instances = file.instances ?? [];
  if (!instances.length) {
    return '—';
  }
  const stores: string[] = [];
  for (const inst of instances) {
    const badge = fixityBadge(inst);
    const label = badge ? `${inst.store} (${badge})` : inst.available ? inst.store : `${inst.store} (offline)`;
    if (!stores.includes(label)) {
      stores.push(label);
    }
  }
  const where = stores.join(', ');
  return instances.some(isGoodCopy) ? where : `no good copy: ${where}`;
}

// ---------------------------------------------------------------- search

export type QueryMode = 'text' | 'json';

/** Outcome of parsing the JSON editor's text before sending it. */
export type JsonCheck = { ok: true; value: unknown } | { ok: false; message: string };

/** Parse the JSON editor's text (the server validates the language itself). */
export function checkJson(text: string): JsonCheck {
  if (!text.trim()) {
    return { ok: false, message: 'Type a JSON search, e.g. {"name-matches": "zen.%"}' };
  }
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (reason) {
    return { ok: false, message: `Not valid JSON: ${errorMessage(reason)}` };
  }
}

/** The search body for a query, without paging fields. */
export function searchBody(
  mode: QueryMode,
  text: string,
  kind: SearchKind,
  sort: string | null
): ISearchRequest {
  const body: ISearchRequest = { kind };
  if (mode === 'json') {
    const check = checkJson(text);
    // Unparseable text goes to the server as a string: its parser names the problem.
    body.search = check.ok ? check.value : text;
  } else {
    body.query = text;
  }
  if (sort) {
    body.sort = sort;
  }
  return body;
}

type SearchFunction = (request: ISearchRequest) => Promise<ISearchReply>;

/**
 * Search state: the query, the pages loaded so far from the server's cursor,
 * the selection and the row shown in detail.
 */
export class SearchModel {
  constructor(search: SearchFunction, pageSize = 200) {
    this._search = search;
    this.pageSize = pageSize;
  }

  pageSize: number;

  mode: QueryMode = 'text';
  text = '';
  jsonText = '{\n  "name-matches": "zen.%"\n}';
  kind: SearchKind = 'files';
  sort: string | null = null;

  /** The rows of the pages loaded so far. */
  rows: SearchRow[] = [];
  /** The kind of `rows` (the kind of the last search run). */
  rowsKind: SearchKind = 'files';
  total: number | null = null;
  nextCursor: string | null = null;
  loading = false;
  error: string | null = null;
  /** The server extension is missing (404 / unreachable). */
  missing = false;
  /** Whether a search has run since the panel opened. */
  searched = false;
  /** The last search asked for failed: the rows shown are from an earlier one. */
  failed = false;
  /** The body of the last search that ran (without cursor), for "stage all results". */
  lastBody: ISearchRequest | null = null;
  /** Names (or obsids / session ids) selected. */
  readonly selection = new Set<string>();
  /** Key of the row whose detail is open. */
  detailKey: string | null = null;

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get hasMore(): boolean {
    return this.nextCursor !== null;
  }

  /** The search in the box (query or JSON, kind, sort), without paging fields. */
  currentBody(): ISearchRequest {
    return searchBody(this.mode, this.mode === 'json' ? this.jsonText : this.text, this.kind, this.sort);
  }

  /**
   * The rows shown are not those of the search in the box: it was edited since, or running
   * it failed. Stale rows are marked and cannot be staged.
   */
  get stale(): boolean {
    return this.searched && (this.failed || !sameSearch(this.currentBody(), this.lastBody));
  }

  /** The JSON text for the JSON editor's current content, or the error. */
  get jsonCheck(): JsonCheck {
    return checkJson(this.jsonText);
  }

  set(
    values: Partial<Pick<SearchModel, 'mode' | 'text' | 'jsonText' | 'kind' | 'pageSize'>>
  ): void {
    const edited = (['mode', 'text', 'jsonText', 'kind'] as const).some(
      key => values[key] !== undefined && values[key] !== this[key]
    );
    const kindBefore = this.kind;
    Object.assign(this, values);
    if (this.kind !== kindBefore) {
      // Each kind keeps its own sort; a sort the new kind does not offer would make every
      // search of it fail, so it starts from the one before only where that one applies.
      this._sorts[kindBefore] = this.sort;
      const kept = this._sorts[this.kind];
      this.sort = kept !== undefined ? kept : sortFor(this.kind, this.sort);
    }
    if (edited) {
      // The last error was about a search that is no longer in the box.
      this.error = null;
    }
    this._emit();
  }

  /**
   * Open the JSON editor on the search in the one-line box (the server translates it); an
   * empty box gives an empty search. A box the server cannot translate stays open, with the
   * server's message as the error.
   */
  async openJson(): Promise<void> {
    if (this.mode === 'json') {
      return;
    }
    const text = this.text.trim();
    if (!text) {
      this.set({ mode: 'json', jsonText: '{}' });
      return;
    }
    try {
      const reply = await this._search({ query: text, kind: this.kind, limit: 1 });
      this.set({ mode: 'json', jsonText: JSON.stringify(reply.search ?? {}, null, 2) });
    } catch (reason) {
      this.error = errorMessage(reason);
      this._emit();
    }
  }

  /** Run the search from the first page. */
  async run(): Promise<void> {
    const body = this.currentBody();
    const generation = ++this._generation;
    this.loading = true;
    this.error = null;
    this._emit();
    try {
      const reply = await this._search({
        ...body,
        limit: this.pageSize,
        count: true
      });
      if (generation !== this._generation) {
        return; // a newer search superseded this one
      }
      this.rows = reply.results;
      this.rowsKind = this.kind;
      this.total = reply.total;
      this.nextCursor = reply.next_cursor;
      this.lastBody = body;
      this.selection.clear();
      this.detailKey = null;
      this.missing = false;
      this.searched = true;
      this.failed = false;
    } catch (reason) {
      if (generation !== this._generation) {
        return;
      }
      this.error = errorMessage(reason);
      this.missing = isMissing(reason);
      this.failed = true;
    } finally {
      if (generation === this._generation) {
        this.loading = false;
        this._emit();
      }
    }
  }

  /** Fetch the next page from the server's cursor (no-op when loading or at the end). */
  async loadMore(): Promise<void> {
    if (this.loading || !this.nextCursor || !this.lastBody) {
      return;
    }
    const generation = this._generation;
    this.loading = true;
    this._emit();
    try {
      const reply = await this._search({
        ...this.lastBody,
        limit: this.pageSize,
        cursor: this.nextCursor
      });
      if (generation !== this._generation) {
        return;
      }
      this.rows = this.rows.concat(reply.results);
      this.nextCursor = reply.next_cursor;
    } catch (reason) {
      if (generation === this._generation) {
        this.error = errorMessage(reason);
      }
    } finally {
      if (generation === this._generation) {
        this.loading = false;
        this._emit();
      }
    }
  }

  /** Sort by a column on the server (asc, desc, default) and reload from page one. */
  async sortBy(column: string): Promise<void> {
    this.sort = sortFor(this.kind, nextSort(this.sort, column));
    if (this.searched) {
      await this.run();
    } else {
      this._emit();
    }
  }

  key(row: SearchRow): string {
    return rowKey(this.rowsKind, row);
  }

  isSelected(row: SearchRow): boolean {
    return this.selection.has(this.key(row));
  }

  toggle(key: string, selected?: boolean): void {
    const on = selected ?? !this.selection.has(key);
    if (on) {
      this.selection.add(key);
    } else {
      this.selection.delete(key);
    }
    this._emit();
  }

  /** Select the rows from index a to b (inclusive), as shift-click does. */
  selectRange(a: number, b: number): void {
    const [lo, hi] = a <= b ? [a, b] : [b, a];
    for (let i = Math.max(0, lo); i <= Math.min(hi, this.rows.length - 1); i++) {
      this.selection.add(this.key(this.rows[i]));
    }
    this._emit();
  }

  selectAllLoaded(): void {
    for (const row of this.rows) {
      this.selection.add(this.key(row));
    }
    this._emit();
  }

  clearSelection(): void {
    this.selection.clear();
    this._emit();
  }

  /** The selected file names, in row order (files only; none while the rows are stale). */
  selectedNames(): string[] {
    if (this.rowsKind !== 'files' || this.stale) {
      return [];
    }
    return this.rows.map(r => (r as IFile).name).filter(n => this.selection.has(n));
  }

  /** The stage target "all results" of the search shown, or null (stale, not files, none). */
  allResultsTarget(): StageTarget | null {
    if (!this.searched || this.stale || this.rowsKind !== 'files' || !this.lastBody || !this.rows.length) {
      return null;
    }
    return targetOfSearch(this.lastBody);
  }

  showDetail(key: string | null): void {
    this.detailKey = key;
    this._emit();
  }

  private _emit(): void {
    this._changed.emit();
  }

  private _search: SearchFunction;
  private _sorts: Partial<Record<SearchKind, string | null>> = {};
  private _generation = 0;
  private _changed = new Signal<this, void>(this);
}

// ---------------------------------------------------------------- staging

/** A human description of a stage target. */
export function describeTarget(target: StageTarget): string {
  if ('names' in target) {
    return target.names.length === 1
      ? target.names[0]
      : `${target.names.length.toLocaleString('en-US')} selected files`;
  }
  if ('query' in target) {
    return target.query ? `all results of “${target.query}”` : 'all files';
  }
  return 'all results of the JSON search';
}

/** The stage target for "all results" of a search body (files only). */
export function targetOfSearch(body: ISearchRequest): StageTarget {
  if (body.search !== undefined) {
    return { search: body.search };
  }
  return { query: body.query ?? '' };
}

/** The destination to send for a file browser path ("" is the root folder). */
export function destinationOf(path: string): string {
  const p = path.replace(/^\/+/, '').replace(/\/+$/, '');
  return p || '.';
}

/**
 * A job's destination (absolute on the server) as a path relative to the
 * Jupyter root for the file browser; null when it lies outside the root.
 */
export function relativeToRoot(destination: string, serverRoot: string): string | null {
  if (!destination.startsWith('/')) {
    return destinationOf(destination) === '.' ? '' : destinationOf(destination);
  }
  const root = serverRoot.replace(/\/+$/, '');
  if (!root || !root.startsWith('/')) {
    return null;
  }
  if (destination === root) {
    return '';
  }
  if (destination.startsWith(root + '/')) {
    return destination.slice(root.length + 1).replace(/\/+$/, '');
  }
  return null;
}

/**
 * The stage form: destination, method, and the dry-run preview shown before
 * the user confirms.
 */
export class StageModel {
  constructor(client: Pick<ArchiveClient, 'dryRun' | 'stage'>) {
    this._client = client;
  }

  destination = '.';
  method: StageMethod = 'copy';
  /** What the preview is about (set while a preview is shown). */
  target: StageTarget | null = null;
  preview: IDryRun | null = null;
  busy = false;
  error: string | null = null;

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** A job was launched. */
  get launched(): ISignal<this, IJob> {
    return this._launched;
  }

  set(values: Partial<Pick<StageModel, 'destination' | 'method'>>): void {
    Object.assign(this, values);
    if (this.preview) {
      // The preview was for another destination or method: ask again.
      this.preview = null;
      this.target = null;
    }
    this._changed.emit();
  }

  /** Ask the server what staging `target` would do. */
  async previewTarget(target: StageTarget): Promise<IDryRun | null> {
    this.target = target;
    this.preview = null;
    this.error = null;
    this.busy = true;
    this._changed.emit();
    try {
      this.preview = await this._client.dryRun({
        ...target,
        destination: this.destination,
        method: this.method
      });
      return this.preview;
    } catch (reason) {
      this.error = errorMessage(reason);
      this.target = null;
      return null;
    } finally {
      this.busy = false;
      this._changed.emit();
    }
  }

  /** Launch the previewed job. */
  async confirm(force = false): Promise<IJob | null> {
    if (!this.target) {
      return null;
    }
    this.busy = true;
    this.error = null;
    this._changed.emit();
    try {
      const job = await this._client.stage({
        ...this.target,
        destination: this.destination,
        method: this.method,
        force
      });
      this.target = null;
      this.preview = null;
      this._launched.emit(job);
      return job;
    } catch (reason) {
      this.error = errorMessage(reason);
      return null;
    } finally {
      this.busy = false;
      this._changed.emit();
    }
  }

  dismiss(): void {
    this.target = null;
    this.preview = null;
    this.error = null;
    this._changed.emit();
  }

  private _client: Pick<ArchiveClient, 'dryRun' | 'stage'>;
  private _changed = new Signal<this, void>(this);
  private _launched = new Signal<this, IJob>(this);
}

// ---------------------------------------------------------------- jobs

/** The schema id of the server's job progress events (hera_stage_ext/api/events.py). */
export const JOB_PROGRESS_SCHEMA_ID = 'https://github.com/hera-stage-ext/events/job-progress';

export const TERMINAL_STATES: ReadonlyArray<string> = ['succeeded', 'failed', 'cancelled'];

export function isTerminal(state: JobState | string): boolean {
  return TERMINAL_STATES.includes(state);
}

/** A job progress event as it arrives from the event stream. */
export interface IJobProgressEvent {
  schema_id: string;
  id: number;
  state: string;
  files_total: number;
  files_done: number;
  bytes_total: number;
  bytes_done: number;
  [key: string]: unknown;
}

/** Whether an event from the stream is one of ours. */
export function isJobProgressEvent(event: { schema_id?: unknown }): event is IJobProgressEvent {
  const e = event as Partial<IJobProgressEvent>;
  return (
    e.schema_id === JOB_PROGRESS_SCHEMA_ID && typeof e.id === 'number' && typeof e.state === 'string'
  );
}

const PROGRESS_FIELDS = [
  'kind',
  'state',
  'destination',
  'files_total',
  'files_done',
  'files_failed',
  'files_skipped',
  'bytes_total',
  'bytes_done',
  'bytes_moving',
  'rate_bytes_per_s',
  'eta_s'
] as const;

/**
 * Merge an update (an event, or a job read by polling) into what we know.
 *
 * Replies can arrive out of order (a poll sent before an event was applied),
 * so while a job stays in one state its counters never go back, and a
 * finished job is only reopened by "queued" (a retry).
 */
export function mergeJob(prev: IJob | undefined, update: Partial<IJob> & { id: number }): IJob {
  if (!prev) {
    return {
      files_total: 0,
      files_done: 0,
      bytes_total: 0,
      bytes_done: 0,
      state: 'queued',
      ...update
    } as IJob;
  }
  const next: IJob = { ...prev };
  // A finished job only reopens through a retry ("queued"): a "running" read
  // before it finished is stale.
  const stale =
    update.state !== undefined &&
    isTerminal(prev.state) &&
    !isTerminal(update.state) &&
    update.state !== 'queued';
  for (const [key, value] of Object.entries(update)) {
    if (value === undefined) {
      continue;
    }
    if (stale && (key === 'state' || key === 'marker' || PROGRESS_FIELDS.includes(key as any))) {
      continue;
    }
    (next as any)[key] = value;
  }
  if (!stale && update.state !== undefined && update.state === prev.state) {
    for (const key of ['files_done', 'bytes_done', 'files_failed', 'files_skipped'] as const) {
      const before = prev[key];
      const after = next[key];
      if (typeof before === 'number' && typeof after === 'number' && after < before) {
        next[key] = before;
      }
    }
  }
  return next;
}

/** Reduce one progress event into the job map (returns a new map). */
export function reduceJobEvent(
  jobs: ReadonlyMap<number, IJob>,
  event: IJobProgressEvent
): Map<number, IJob> {
  const update: Partial<IJob> & { id: number } = { id: event.id };
  for (const key of PROGRESS_FIELDS) {
    if (event[key] !== undefined) {
      (update as any)[key] = event[key];
    }
  }
  const next = new Map(jobs);
  next.set(event.id, mergeJob(jobs.get(event.id), update));
  return next;
}

/**
 * The bytes a job has moved as shown: those committed and those written but not committed
 * yet (`bytes_moving`), never past the total.
 */
export function bytesMoved(job: IJob): number {
  const moved = job.bytes_done + Math.max(0, job.bytes_moving ?? 0);
  return job.bytes_total > 0 ? Math.min(job.bytes_total, moved) : moved;
}

/** Fractions done (0..1) by files and bytes, and the percent shown. */
export function jobProgress(job: IJob): { files: number; bytes: number; percent: number } {
  const files = job.files_total > 0 ? (job.files_done + (job.files_skipped ?? 0)) / job.files_total : 0;
  const bytes = job.bytes_total > 0 ? bytesMoved(job) / job.bytes_total : files;
  let percent = Math.floor(Math.min(1, Math.max(0, bytes)) * 100);
  if (job.state === 'succeeded') {
    percent = 100;
  } else if (percent === 100 && !isTerminal(job.state)) {
    percent = 99; // 100% only once the job says it is done
  }
  return { files: Math.min(1, files), bytes: Math.min(1, bytes), percent };
}

/** How far back (ms) the rate shown looks at the bytes a job reported. */
export const RATE_WINDOW_MS = 10 * 1000;
/** The least time (ms) the samples must span before a rate is shown. */
export const RATE_MIN_SPAN_MS = 2 * 1000;

/** A job's bytes done at a moment (ms). */
export interface IByteSample {
  t: number;
  bytes: number;
}

/**
 * Add a sample of a job's bytes at time `t`, keeping those of the last `windowMs` and the
 * newest one before them (where the window starts); bytes going back (a retry) restart it.
 */
export function addSample(
  samples: IByteSample[],
  t: number,
  bytes: number,
  windowMs = RATE_WINDOW_MS
): IByteSample[] {
  const last = samples[samples.length - 1];
  if (last && bytes < last.bytes) {
    samples = [];
  } else if (last && bytes === last.bytes) {
    return samples; // nothing moved: the rate falls as the window passes
  }
  const next = samples.concat([{ t, bytes }]);
  let first = 0;
  while (first + 1 < next.length && next[first + 1].t <= t - windowMs) {
    first++;
  }
  return next.slice(first);
}

/**
 * Bytes per second over the last `windowMs` before `now`, from the samples: the bytes moved
 * since the window's start over the time since then (so a job that stops moving shows its
 * rate falling). Null until the samples span `minSpanMs`.
 */
export function windowRate(
  samples: ReadonlyArray<IByteSample>,
  now: number,
  windowMs = RATE_WINDOW_MS,
  minSpanMs = RATE_MIN_SPAN_MS
): number | null {
  if (!samples.length) {
    return null;
  }
  let start = samples[0];
  for (const sample of samples) {
    if (sample.t <= now - windowMs) {
      start = sample;
    } else {
      break;
    }
  }
  const span = now - start.t;
  if (span < minSpanMs) {
    return null;
  }
  const moved = samples[samples.length - 1].bytes - start.bytes;
  return Math.max(0, moved) / (span / 1000);
}

/** A job's rate (bytes/s) and ETA (s) from its byte samples; null where not known yet. */
export function jobSpeed(
  job: IJob,
  samples: ReadonlyArray<IByteSample>,
  now: number
): { rate: number | null; eta: number | null } {
  if (isTerminal(job.state) || job.state === 'queued') {
    return { rate: null, eta: null };
  }
  const rate = windowRate(samples, now);
  const left = Math.max(0, job.bytes_total - bytesMoved(job));
  const eta = rate && rate > 0 ? left / rate : left === 0 ? 0 : null;
  return { rate, eta };
}

/** The job list's filters. */
export type JobFilter = 'all' | 'running' | 'finished' | 'failed';

export const JOB_FILTERS: JobFilter[] = ['all', 'running', 'finished', 'failed'];

/** Whether a job shows under a filter: running (queued too), finished (succeeded), failed (or cancelled). */
export function jobMatches(job: IJob, filter: JobFilter): boolean {
  switch (filter) {
    case 'all':
      return true;
    case 'running':
      return !isTerminal(job.state);
    case 'finished':
      return job.state === 'succeeded';
    case 'failed':
      return job.state === 'failed' || job.state === 'cancelled';
  }
}

/** Seconds a job has run: from its start to its end, or to `now` while it runs; null before it starts. */
export function jobDuration(job: IJob, now: number): number | null {
  if (!job.started_at) {
    return null;
  }
  const start = Date.parse(job.started_at);
  const end = job.finished_at ? Date.parse(job.finished_at) : now;
  if (Number.isNaN(start) || Number.isNaN(end)) {
    return null;
  }
  return Math.max(0, (end - start) / 1000);
}

/**
 * Every job of this user: listed by polling (backing off, standing by when
 * the page is hidden or nothing runs) and updated live from the event stream.
 */
export class JobsModel {
  constructor(
    client: Pick<ArchiveClient, 'jobs' | 'job' | 'cancel' | 'retry' | 'forget'>,
    options: { interval?: number; maxInterval?: number; autoPoll?: boolean } = {}
  ) {
    this._client = client;
    this._poll = new Poll({
      auto: options.autoPoll ?? true,
      factory: () => this._pollOnce(),
      frequency: {
        interval: options.interval ?? 2000,
        backoff: true,
        max: options.maxInterval ?? 30 * 1000
      },
      name: 'hera_stage_ext:jobs',
      standby: () => (this._visible && this.hasActive) || !this._loaded ? 'when-hidden' : true
    });
  }

  /** Newest first. */
  get jobs(): IJob[] {
    return Array.from(this._jobs.values()).sort((a, b) => b.id - a.id);
  }

  get(id: number): IJob | undefined {
    return this._jobs.get(id);
  }

  get hasActive(): boolean {
    for (const job of this._jobs.values()) {
      if (!isTerminal(job.state)) {
        return true;
      }
    }
    return false;
  }

  get error(): string | null {
    return this._error;
  }

  get missing(): boolean {
    return this._missing;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** A job went from queued/running to succeeded/failed/cancelled while we watched. */
  get jobEnded(): ISignal<this, IJob> {
    return this._jobEnded;
  }

  get poll(): Poll {
    return this._poll;
  }

  /** Whether the panel is shown (polling stands by when it is not and no event is due). */
  setVisible(visible: boolean): void {
    this._visible = visible;
    if (visible && this.hasActive) {
      void this._poll.refresh();
    }
  }

  /** Read every job now. */
  async refresh(): Promise<void> {
    try {
      const list = await this._client.jobs();
      this._error = null;
      this._missing = false;
      const seen = new Set<number>();
      for (const job of list) {
        seen.add(job.id);
        this._set(mergeJob(this._jobs.get(job.id), job));
      }
      for (const id of Array.from(this._jobs.keys())) {
        if (!seen.has(id)) {
          this._jobs.delete(id); // forgotten on the server
        }
      }
      this._loaded = true;
    } catch (reason) {
      this._error = errorMessage(reason);
      this._missing = isMissing(reason);
      this._changed.emit();
      throw reason;
    }
    this._changed.emit();
  }

  /** A job just launched by this panel. */
  add(job: IJob): void {
    this._set(mergeJob(this._jobs.get(job.id), job));
    this._changed.emit();
    void this._poll.refresh();
  }

  /** Apply one event from the server's event bus; ignores other schemas. */
  handleEvent(event: { schema_id?: unknown }): void {
    if (!isJobProgressEvent(event)) {
      return;
    }
    this._lastEvent = Date.now();
    const prev = this._jobs.get(event.id);
    const next = reduceJobEvent(this._jobs, event);
    this._set(next.get(event.id)!);
    this._changed.emit();
    const ended = prev !== undefined && !isTerminal(prev.state) && isTerminal(event.state);
    if (!prev || ended) {
      // A job launched elsewhere (CLI, notebook), or one that just ended: fetch its whole
      // record (events carry progress only, not the error or the marker in its folder).
      void this._client
        .job(event.id)
        .then(job => {
          this._set(mergeJob(this._jobs.get(job.id), job));
          this._changed.emit();
        })
        .catch(() => undefined);
    }
  }

  async cancel(id: number): Promise<void> {
    const job = await this._client.cancel(id);
    this._set(mergeJob(this._jobs.get(id), job));
    this._changed.emit();
  }

  async retry(id: number): Promise<void> {
    const job = await this._client.retry(id);
    this._set(mergeJob(this._jobs.get(id), job));
    this._changed.emit();
    void this._poll.refresh();
  }

  /** Forget a job that has ended (and its log); what it staged stays. */
  async forget(id: number): Promise<void> {
    await this._client.forget(id);
    this._jobs.delete(id);
    this._samples.delete(id);
    this._changed.emit();
  }

  /** Forget every job that succeeded or was cancelled (failed ones stay, to be retried or read). */
  async clearFinished(): Promise<number> {
    let forgotten = 0;
    try {
      for (const job of this.jobs) {
        if (job.state === 'succeeded' || job.state === 'cancelled') {
          await this._client.forget(job.id);
          this._jobs.delete(job.id);
          this._samples.delete(job.id);
          forgotten++;
        }
      }
    } finally {
      this._changed.emit();
    }
    return forgotten;
  }

  /** A job's rate and ETA, from the bytes it reported over the last seconds. */
  speed(job: IJob, now = Date.now()): { rate: number | null; eta: number | null } {
    return jobSpeed(job, this._samples.get(job.id) ?? [], now);
  }

  dispose(): void {
    this._poll.dispose();
    Signal.clearData(this);
  }

  private async _pollOnce(): Promise<void> {
    // Events are the main feed: while they flow, polling only checks in rarely.
    if (this._loaded && Date.now() - this._lastEvent < 1500 && this._polledRecently()) {
      return;
    }
    this._lastPoll = Date.now();
    await this.refresh();
  }

  private _polledRecently(): boolean {
    return Date.now() - this._lastPoll < 10 * 1000;
  }

  private _set(job: IJob): void {
    const prev = this._jobs.get(job.id);
    this._jobs.set(job.id, job);
    if (job.state === 'running') {
      this._samples.set(job.id, addSample(this._samples.get(job.id) ?? [], Date.now(), bytesMoved(job)));
    } else {
      this._samples.delete(job.id);
    }
    if (prev && !isTerminal(prev.state) && isTerminal(job.state)) {
      this._jobEnded.emit(job);
    }
  }

  private _client: Pick<ArchiveClient, 'jobs' | 'job' | 'cancel' | 'retry' | 'forget'>;
  private _samples = new Map<number, IByteSample[]>();
  private _jobs = new Map<number, IJob>();
  private _poll: Poll;
  private _visible = true;
  private _loaded = false;
  private _lastEvent = 0;
  private _lastPoll = 0;
  private _error: string | null = null;
  private _missing = false;
  private _changed = new Signal<this, void>(this);
  private _jobEnded = new Signal<this, IJob>(this);
}

// ---------------------------------------------------------------- log tail

/** The tail of one job's log, read from a byte offset (whole lines). */
export class LogTail {
  constructor(
    client: Pick<ArchiveClient, 'log'>,
    readonly jobId: number,
    readonly maxChars = 200 * 1000
  ) {
    this._client = client;
  }

  text = '';
  offset = 0;
  error: string | null = null;

  /** Read what was appended since the last call; returns whether text was added. */
  async fetch(): Promise<boolean> {
    try {
      const reply = await this._client.log(this.jobId, this.offset);
      this.error = null;
      this.offset = reply.next_offset;
      if (!reply.text) {
        return false;
      }
      this.text += reply.text;
      if (this.text.length > this.maxChars) {
        const cut = this.text.indexOf('\n', this.text.length - this.maxChars);
        this.text = this.text.slice(cut >= 0 ? cut + 1 : this.text.length - this.maxChars);
      }
      return true;
    } catch (reason) {
      this.error = errorMessage(reason);
      return false;
    }
  }

  private _client: Pick<ArchiveClient, 'log'>;
}
