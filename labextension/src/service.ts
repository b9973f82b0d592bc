/**
 * Every endpoint of the hera_stage_ext REST API. Its types come from the API's OpenAPI
 * document (labextension/openapi.json, generated from hera_stage_ext/api/models.py and
 * replies.py), turned into TypeScript by openapi-typescript when the extension is built.
 *
 * No JupyterLab imports: the transport is injected (index.ts passes
 * ServerConnection.makeRequest), so jest can test URL building and error
 * handling with a fake.
 */

import type { components } from './generated/openapi';

/** The API's route, relative to the server's base URL. */
export const API_ROUTE = 'hera-stage/api';

/** The API's schemas, generated from its OpenAPI document at build time (`jlpm build:api-types`). */
type Schemas = components['schemas'];

/** Kinds of search the panel offers. */
export type SearchKind = Exclude<NonNullable<Schemas['SearchRequest']['kind']>, 'instances'>;

export const SEARCH_KINDS: SearchKind[] = ['files', 'observations', 'sessions'];

export type StageMethod = NonNullable<Schemas['StageRequest']['method']>;

export const STAGE_METHODS: StageMethod[] = ['copy', 'hardlink', 'symlink', 'reflink', 'contents'];

export type JobState = Schemas['Job']['state'];

/** A copy of a file; `fixity` "bad" and "missing" copies are never staged from. */
export type IInstance = Schemas['Instance'];
export type IFile = Schemas['File'];
export type IObservation = Schemas['Observation'];
export type ISession = Schemas['Session'];
export type IArchiveEvent = Schemas['Event'];
export type IFileDetail = Schemas['FileDetail'];

export type SearchRow = IFile | IObservation | ISession;

/**
 * Exactly one of `query` (one-line text) and `search` (the JSON language: any JSON the
 * user typed, judged by the server's parser, which names the problem).
 */
export type ISearchRequest = Omit<Schemas['SearchRequest'], 'search'> & { search?: unknown };

export type ISearchReply<T = SearchRow> = Omit<Schemas['SearchReply'], 'results'> & {
  results: T[];
};

/** What to stage: exactly one of names, search or query. */
export type StageTarget =
  | { names: string[] }
  | { search: unknown }
  | { query: string };

export type IStageRequest = StageTarget &
  Omit<Schemas['StageRequest'], 'names' | 'search' | 'query' | 'with_items'>;

/** A dry run's answer: what the job would do. */
export type IDryRun = Schemas['DryRun'];

export type IJob = Schemas['Job'];

/** The Librarian's marker files a staging destination holds. */
export type JobMarker = NonNullable<IJob['marker']>;

export type IJobLog = Schemas['JobLog'];

/** One member of a directory data set (GET files/<name>/members). */
export type IMember = Schemas['Member'];

export type IMembersReply = Schemas['Members'];

export type IStore = Schemas['Store'];

/** Transport: (url, init) -> Response. ServerConnection.makeRequest in the lab. */
export type RequestFunction = (url: string, init: RequestInit) => Promise<Response>;

/**
 * An answer that was not 2xx, or no answer at all.
 *
 * `missing` is true when the server extension itself is absent: no answer, or
 * a 404 that is not one of the API's own JSON errors (an unknown route).
 */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly missing: boolean = false,
    readonly error?: string
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** Join a base URL and path segments with exactly one slash between them. */
export function joinUrl(base: string, ...parts: string[]): string {
  let url = base.replace(/\/+$/, '');
  for (const part of parts) {
    const p = part.replace(/^\/+/, '').replace(/\/+$/, '');
    if (p) {
      url += '/' + p;
    }
  }
  return url;
}

/** A query string from the defined values ("" when there are none). */
export function queryString(
  params: Record<string, string | number | boolean | null | undefined>
): string {
  const parts = Object.entries(params)
    .filter(([, v]) => v !== undefined && v !== null)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
  return parts.length ? `?${parts.join('&')}` : '';
}

/** Builds every endpoint's URL under `<baseUrl>/hera-stage/api`. */
export class ApiUrls {
  constructor(readonly baseUrl: string) {}

  get root(): string {
    return joinUrl(this.baseUrl, API_ROUTE);
  }
  status(): string {
    return joinUrl(this.root, 'status');
  }
  stores(): string {
    return joinUrl(this.root, 'stores');
  }
  search(): string {
    return joinUrl(this.root, 'search');
  }
  /** A file's detail; names may hold any character but '/', so encode them. */
  file(name: string): string {
    return joinUrl(this.root, 'files', encodeURIComponent(name));
  }
  fileMembers(name: string): string {
    return joinUrl(this.file(name), 'members');
  }
  fileContent(name: string): string {
    return joinUrl(this.file(name), 'content');
  }
  stage(): string {
    return joinUrl(this.root, 'stage');
  }
  jobs(): string {
    return joinUrl(this.root, 'jobs');
  }
  job(id: number): string {
    return joinUrl(this.root, 'jobs', String(Math.trunc(id)));
  }
  cancel(id: number): string {
    return joinUrl(this.job(id), 'cancel');
  }
  retry(id: number): string {
    return joinUrl(this.job(id), 'retry');
  }
  log(id: number, offset = 0): string {
    return joinUrl(this.job(id), 'log') + queryString({ offset: Math.max(0, Math.trunc(offset)) });
  }
  staged(): string {
    return joinUrl(this.root, 'staged');
  }
  stagedClean(): string {
    return joinUrl(this.root, 'staged', 'clean');
  }
}

/** The message of an error reply: the API's JSON `message`, else the body's text. */
async function errorOf(url: string, response: Response): Promise<ApiError> {
  const text = await response.text().catch(() => '');
  let payload: { message?: unknown; error?: unknown } | null = null;
  try {
    payload = JSON.parse(text);
  } catch {
    payload = null;
  }
  if (payload && typeof payload.message === 'string') {
    return new ApiError(
      payload.message,
      response.status,
      false,
      typeof payload.error === 'string' ? payload.error : undefined
    );
  }
  if (response.status === 404) {
    return new ApiError(
      `The hera_stage_ext server extension is not installed or not enabled on this ` +
        `Jupyter server (${url} answered 404). Check \`jupyter server extension list\`.`,
      404,
      true
    );
  }
  const snippet = text.replace(/<[^>]*>/g, ' ').replace(/\s+/g, ' ').trim().slice(0, 200);
  return new ApiError(
    `The archive server answered HTTP ${response.status}${snippet ? `: ${snippet}` : ''}`,
    response.status
  );
}

/** The client of every endpoint. */
export class ArchiveClient {
  constructor(baseUrl: string, request: RequestFunction) {
    this.urls = new ApiUrls(baseUrl);
    this._request = request;
  }

  readonly urls: ApiUrls;

  async status(): Promise<Record<string, unknown>> {
    return this._call('GET', this.urls.status());
  }

  async stores(): Promise<{ stores: IStore[] }> {
    return this._call('GET', this.urls.stores());
  }

  async search<T = SearchRow>(request: ISearchRequest): Promise<ISearchReply<T>> {
    return this._call('POST', this.urls.search(), request);
  }

  async file(name: string): Promise<IFileDetail> {
    return this._call('GET', this.urls.file(name));
  }

  async members(name: string): Promise<IMembersReply> {
    return this._call('GET', this.urls.fileMembers(name));
  }

  async dryRun(request: IStageRequest): Promise<IDryRun> {
    return this._call('POST', this.urls.stage(), { ...request, dry_run: true });
  }

  async stage(request: IStageRequest): Promise<IJob> {
    return this._call('POST', this.urls.stage(), { ...request, dry_run: false });
  }

  async jobs(): Promise<IJob[]> {
    const reply = await this._call<{ jobs: IJob[] }>('GET', this.urls.jobs());
    return reply.jobs;
  }

  async job(id: number): Promise<IJob> {
    return this._call('GET', this.urls.job(id));
  }

  /** Forget a finished job and its log (what it staged stays). */
  async forget(id: number): Promise<void> {
    await this._call('DELETE', this.urls.job(id));
  }

  async cancel(id: number): Promise<IJob> {
    return this._call('POST', this.urls.cancel(id), {});
  }

  async retry(id: number, force = false): Promise<IJob> {
    return this._call('POST', this.urls.retry(id), { force });
  }

  async log(id: number, offset = 0): Promise<IJobLog> {
    return this._call('GET', this.urls.log(id, offset));
  }

  /** The user's staged folders: what each holds, expiry, state; totals, per place, quota. */
  async staged(): Promise<IStagedView> {
    return this._call('GET', this.urls.staged());
  }

  /** Remove expired or chosen staged folders; `dry_run`: only say what would go. */
  async cleanStaged(request: ICleanRequest): Promise<ICleanReport> {
    return this._call('POST', this.urls.stagedClean(), request);
  }

  private async _call<T>(method: string, url: string, body?: unknown): Promise<T> {
    const init: RequestInit = { method };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { 'Content-Type': 'application/json' };
    }
    let response: Response;
    try {
      response = await this._request(url, init);
    } catch (reason) {
      const message = reason instanceof Error ? reason.message : String(reason);
      throw new ApiError(`Could not reach the archive server at ${url}: ${message}`, 0, true);
    }
    if (!response.ok) {
      throw await errorOf(url, response);
    }
    try {
      return (await response.json()) as T;
    } catch (reason) {
      throw new ApiError(`${url} did not answer JSON: ${reason}`, response.status);
    }
  }

  private _request: RequestFunction;
}

// ------------------------------------------------------------ staged data (GET staged, POST staged/clean)

/**
 * A staged folder's state: `intact` (every staged entry there by name, kind and size, nothing
 * else), `changed` (entries missing or changed, or the user's own files beside them), `gone`
 * (no folder), `moved` (the path leads elsewhere now: nothing is read through it), `busy`
 * (a job still stages into it), `unchecked` (a site service's view: its records only).
 */
export type StagedState = Schemas['StagedFolder']['state'];

/** One staged folder (GET staged) as `jobs/cleaner.py` `examine` reports it. */
export type IStagedFolder = Schemas['StagedFolder'];

/** GET staged: the folders, the bytes held per allowed root, the quota. */
export type IStagedView = Schemas['StagedListing'];

/** POST staged/clean: the expired folders and/or these (absolute, or relative to the root). */
export type ICleanRequest = Partial<Schemas['StagedCleanRequest']>;

/** A folder of a clean's report: what was (or would be) removed, what stays and why. */
export type ICleanedFolder = Schemas['CleanedFolder'];

/** POST staged/clean's reply. */
export type ICleanReport = Schemas['CleanReport'];
