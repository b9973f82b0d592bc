/**
 * The archive in a main-area tab: the results with every column, a page per file,
 * observation and session (with what they hold, counted and summed), and the jobs with their
 * logs. The side panel stays the quick search-and-stage; both share the same models.
 */
import * as React from 'react';
import { MainAreaWidget } from '@jupyterlab/apputils';
import { ReactWidget } from '@jupyterlab/ui-components';
import { ISignal, Signal } from '@lumino/signaling';

import { FileDetailBody } from './components/DetailView';
import { JobList } from './components/JobList';
import { ResultsTable } from './components/ResultsTable';
import { SearchBox } from './components/SearchBox';
import { StagedList } from './components/StagedList';
import { useSignal } from './components/hooks';
import { count, humanSize, plural } from './format';
import { errorMessage, JobsModel, SearchModel } from './model';
import { archiveIcon } from './panel';
import { StagedModel } from './staged';
import {
  ArchiveClient,
  IFile,
  IFileDetail,
  IMembersReply,
  IObservation,
  ISearchReply,
  ISearchRequest,
  ISession,
  SearchKind,
  StageTarget
} from './service';

export const MAIN_ID = 'hera-stage-main';

/** A page of the main-area view. */
export type MainPage =
  | { page: 'results' }
  | { page: 'jobs'; job?: number | null }
  | { page: 'staged' }
  | { page: 'file' | 'observation' | 'session'; key: string };

/** The page shown and the way back. */
export class MainNavigation {
  current: MainPage = { page: 'results' };
  readonly back: MainPage[] = [];

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  go(page: MainPage): void {
    if (JSON.stringify(page) !== JSON.stringify(this.current)) {
      this.back.push(this.current);
      if (this.back.length > 50) {
        this.back.shift();
      }
    }
    this.current = page;
    this._changed.emit();
  }

  goBack(): void {
    const page = this.back.pop();
    if (page) {
      this.current = page;
      this._changed.emit();
    }
  }

  private _changed = new Signal<this, void>(this);
}

/** The page of a row of a search of `kind`. */
export function pageOf(kind: SearchKind, key: string): MainPage {
  return { page: kind === 'files' ? 'file' : kind === 'observations' ? 'observation' : 'session', key };
}

export interface IMainViewOptions {
  client: ArchiveClient;
  search: SearchModel;
  jobs: JobsModel;
  staged: StagedModel;
  navigation: MainNavigation;
  /** Preview staging `target` (the preview shows in the side panel). */
  onStage: (target: StageTarget) => void;
  openFolder: (path: string) => void;
  displayPath: (destination: string) => string;
  validate: React.ComponentProps<typeof SearchBox>['validate'];
}

/** The main-area widget. */
export class ArchiveMain extends MainAreaWidget<ReactWidget> {
  constructor(options: IMainViewOptions) {
    const content = ReactWidget.create(<MainView {...options} />);
    content.addClass('jp-HeraStage-mainContent');
    super({ content });
    this.id = MAIN_ID;
    this.title.label = 'HERA archive';
    this.title.icon = archiveIcon;
    this.title.closable = true;
    this.addClass('jp-HeraStage-main');
  }
}

const TABS: ReadonlyArray<['results' | 'jobs' | 'staged', string]> = [
  ['results', 'Search results'],
  ['jobs', 'Jobs'],
  ['staged', 'Staged data']
];

function MainView(props: IMainViewOptions): JSX.Element {
  const { navigation } = props;
  useSignal(navigation.changed);
  const page = navigation.current;
  const go = (p: MainPage) => navigation.go(p);
  let body: JSX.Element;
  switch (page.page) {
    case 'results':
      body = (
        <>
          <SearchBox model={props.search} validate={props.validate} />
          <ResultsTable model={props.search} onOpen={(kind, key) => go(pageOf(kind, key))} />
        </>
      );
      break;
    case 'jobs':
      body = (
        <JobList
          jobs={props.jobs}
          client={props.client}
          openFolder={props.openFolder}
          displayPath={props.displayPath}
          logOpen={page.job ?? null}
        />
      );
      break;
    case 'staged':
      body = <StagedList staged={props.staged} openFolder={props.openFolder} displayPath={props.displayPath} refreshOnMount />;
      break;
    case 'file':
      body = <FilePage key={page.key} name={page.key} {...props} />;
      break;
    case 'observation':
      body = <ObservationPage key={page.key} obsid={Number(page.key)} {...props} />;
      break;
    case 'session':
      body = <SessionPage key={page.key} id={Number(page.key)} {...props} />;
      break;
  }
  return (
    <div className="jp-HeraStage-view jp-HeraStage-mainView" data-page={page.page}>
      <nav className="jp-HeraStage-mainNav" aria-label="Archive pages">
        <button
          type="button"
          className="jp-Button jp-mod-styled jp-HeraStage-back"
          disabled={!navigation.back.length}
          aria-label="Back to the previous page"
          onClick={() => navigation.goBack()}
        >
          ←
        </button>
        {TABS.map(([id, label]) => (
          <button
            key={id}
            type="button"
            className={`jp-HeraStage-mainTab${page.page === id ? ' jp-mod-active' : ''}`}
            aria-current={page.page === id ? 'page' : undefined}
            onClick={() => go({ page: id })}
          >
            {label}
          </button>
        ))}
      </nav>
      {body}
    </div>
  );
}

// ------------------------------------------------------------------ data

/** Every row of a search, page after page, up to `max` rows. */
async function searchAll<T>(
  client: ArchiveClient,
  request: ISearchRequest,
  max = 20000
): Promise<{ rows: T[]; complete: boolean }> {
  const rows: T[] = [];
  let cursor: string | null = null;
  do {
    const reply: ISearchReply<T> = await client.search<T>({ ...request, limit: 1000, cursor });
    rows.push(...reply.results);
    cursor = reply.next_cursor;
  } while (cursor && rows.length < max);
  return { rows, complete: cursor === null };
}

/** Run `load` once per mount; its result, or the error. */
function useLoad<T>(load: () => Promise<T>): { value: T | null; error: string | null } {
  const [state, setState] = React.useState<{ value: T | null; error: string | null }>({ value: null, error: null });
  React.useEffect(() => {
    let live = true;
    load()
      .then(value => live && setState({ value, error: null }))
      .catch(reason => live && setState({ value: null, error: errorMessage(reason) }));
    return () => {
      live = false;
    };
  }, []);
  return state;
}

function Loading(props: { error: string | null }): JSX.Element {
  return props.error ? (
    <div className="jp-HeraStage-error" role="alert">
      {props.error}
    </div>
  ) : (
    <div className="jp-HeraStage-muted">Loading…</div>
  );
}

/** Files per observation: how many, and their bytes. */
function totalsByObsid(files: IFile[]): Map<number, { files: number; bytes: number }> {
  const totals = new Map<number, { files: number; bytes: number }>();
  for (const f of files) {
    if (f.obsid === null) {
      continue;
    }
    const t = totals.get(f.obsid) ?? { files: 0, bytes: 0 };
    t.files += 1;
    t.bytes += f.size;
    totals.set(f.obsid, t);
  }
  return totals;
}

const bytesOf = (files: IFile[]) => files.reduce((sum, f) => sum + f.size, 0);

function Link(props: { onClick: () => void; children: React.ReactNode; className?: string }): JSX.Element {
  return (
    <button type="button" className={`jp-HeraStage-link ${props.className ?? ''}`} onClick={props.onClick}>
      {props.children}
    </button>
  );
}

// ------------------------------------------------------------------ pages

function FilePage(props: IMainViewOptions & { name: string }): JSX.Element {
  const { client, name, navigation } = props;
  const detail = useLoad<IFileDetail>(() => client.file(name));
  const d = detail.value;
  return (
    <article className="jp-HeraStage-page" data-kind="file" aria-label={`File ${name}`}>
      <header className="jp-HeraStage-pageHeader">
        <h2 title={name}>{name}</h2>
        <button type="button" className="jp-Button jp-mod-styled jp-mod-accept" onClick={() => props.onStage({ names: [name] })}>
          Stage this file
        </button>
      </header>
      {!d ? (
        <Loading error={detail.error} />
      ) : (
        <>
          <FileDetailBody detail={d} onObservation={obsid => navigation.go({ page: 'observation', key: String(obsid) })} />
          {d.is_directory && <Members client={client} name={name} />}
        </>
      )}
    </article>
  );
}

function Members(props: { client: ArchiveClient; name: string }): JSX.Element {
  const members = useLoad<IMembersReply>(() => props.client.members(props.name));
  const m = members.value;
  return (
    <section className="jp-HeraStage-members" aria-label="Members of the data set">
      <h4>Members{m ? ` (${count(m.members.length)}${m.truncated ? '+' : ''})` : ''}</h4>
      {!m ? (
        <Loading error={members.error} />
      ) : (
        <table className="jp-HeraStage-table">
          <thead>
            <tr>
              <th>Member</th>
              <th className="jp-mod-numeric">Size</th>
            </tr>
          </thead>
          <tbody>
            {m.members.map(member => (
              <tr key={member.path}>
                <td className="jp-HeraStage-mono">
                  {member.path}
                  {member.type === 'folder' ? '/' : member.type === 'link' ? ' (link)' : ''}
                </td>
                <td className="jp-mod-numeric">{member.size === null ? '' : humanSize(member.size)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function FilesTable(props: { files: IFile[]; onOpen: (name: string) => void }): JSX.Element {
  return (
    <table className="jp-HeraStage-table" aria-label="Files">
      <thead>
        <tr>
          <th>Name</th>
          <th>Type</th>
          <th className="jp-mod-numeric">Size</th>
        </tr>
      </thead>
      <tbody>
        {props.files.map(f => (
          <tr key={f.name} data-key={f.name}>
            <td>
              <Link onClick={() => props.onOpen(f.name)}>{f.name}</Link>
            </td>
            <td>{f.type}</td>
            <td className="jp-mod-numeric">{humanSize(f.size)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function ObservationPage(props: IMainViewOptions & { obsid: number }): JSX.Element {
  const { client, obsid, navigation } = props;
  const data = useLoad(async () => {
    const [obs, files] = await Promise.all([
      client.search<IObservation>({ query: `obsid:${obsid}`, kind: 'observations', limit: 1 }),
      searchAll<IFile>(client, { query: `obsid:${obsid}`, kind: 'files', sort: 'name' })
    ]);
    return { observation: obs.results[0] ?? null, ...files };
  });
  const v = data.value;
  return (
    <article className="jp-HeraStage-page" data-kind="observation" aria-label={`Observation ${obsid}`}>
      <header className="jp-HeraStage-pageHeader">
        <h2>Observation {obsid}</h2>
        <button type="button" className="jp-Button jp-mod-styled jp-mod-accept" onClick={() => props.onStage({ query: `obsid:${obsid}` })}>
          Stage all its files
        </button>
      </header>
      {!v ? (
        <Loading error={data.error} />
      ) : !v.observation ? (
        <div className="jp-HeraStage-error">No observation {obsid} in the archive.</div>
      ) : (
        <>
          <dl className="jp-HeraStage-fields">
            <dt>Session</dt>
            <dd>
              {v.observation.session_id === null ? (
                '—'
              ) : (
                <Link className="jp-HeraStage-sessionLink" onClick={() => navigation.go({ page: 'session', key: String(v.observation!.session_id) })}>
                  {v.observation.session_id}
                </Link>
              )}
            </dd>
            <dt>Start JD</dt>
            <dd data-field="jd">{v.observation.start_time_jd.toFixed(5)}</dd>
            <dt>Stop JD</dt>
            <dd>{v.observation.stop_time_jd.toFixed(5)}</dd>
            <dt>Start LST</dt>
            <dd data-field="lst">{v.observation.start_lst_hr.toFixed(4)} h</dd>
            <dt>Files</dt>
            <dd data-field="totals">
              {plural(v.rows.length, 'file')}{v.complete ? '' : '+'}, {humanSize(bytesOf(v.rows))}
            </dd>
          </dl>
          <FilesTable files={v.rows} onOpen={name => navigation.go({ page: 'file', key: name })} />
        </>
      )}
    </article>
  );
}

function SessionPage(props: IMainViewOptions & { id: number }): JSX.Element {
  const { client, id, navigation } = props;
  const data = useLoad(async () => {
    const [session, observations, files] = await Promise.all([
      client.search<ISession>({ query: `session:${id}`, kind: 'sessions', limit: 1 }),
      searchAll<IObservation>(client, { query: `session:${id}`, kind: 'observations', sort: 'obsid' }),
      searchAll<IFile>(client, { query: `session:${id}`, kind: 'files' })
    ]);
    return { session: session.results[0] ?? null, observations, files };
  });
  const v = data.value;
  const totals = v ? totalsByObsid(v.files.rows) : new Map();
  return (
    <article className="jp-HeraStage-page" data-kind="session" aria-label={`Session ${id}`}>
      <header className="jp-HeraStage-pageHeader">
        <h2>Session {id}</h2>
        <button type="button" className="jp-Button jp-mod-styled jp-mod-accept" onClick={() => props.onStage({ query: `session:${id}` })}>
          Stage all its files
        </button>
      </header>
      {!v ? (
        <Loading error={data.error} />
      ) : !v.session ? (
        <div className="jp-HeraStage-error">No session {id} in the archive.</div>
      ) : (
        <>
          <dl className="jp-HeraStage-fields">
            <dt>Start JD</dt>
            <dd>{v.session.start_time_jd.toFixed(5)}</dd>
            <dt>Stop JD</dt>
            <dd>{v.session.stop_time_jd.toFixed(5)}</dd>
            <dt>Observations</dt>
            <dd data-field="observations">
              {count(v.observations.rows.length)}
              {v.observations.complete ? '' : '+'}
            </dd>
            <dt>Files</dt>
            <dd data-field="totals">
              {plural(v.files.rows.length, 'file')}{v.files.complete ? '' : '+'}, {humanSize(bytesOf(v.files.rows))}
            </dd>
          </dl>
          <table className="jp-HeraStage-table" aria-label="Observations">
            <thead>
              <tr>
                <th>Obsid</th>
                <th className="jp-mod-numeric">Start JD</th>
                <th className="jp-mod-numeric">LST (h)</th>
                <th className="jp-mod-numeric">Files</th>
                <th className="jp-mod-numeric">Size</th>
              </tr>
            </thead>
            <tbody>
              {v.observations.rows.map(o => (
                <tr key={o.obsid} data-key={o.obsid}>
                  <td>
                    <Link onClick={() => navigation.go({ page: 'observation', key: String(o.obsid) })}>{o.obsid}</Link>
                  </td>
                  <td className="jp-mod-numeric">{o.start_time_jd.toFixed(5)}</td>
                  <td className="jp-mod-numeric">{o.start_lst_hr.toFixed(3)}</td>
                  <td className="jp-mod-numeric">{count(totals.get(o.obsid)?.files ?? 0)}</td>
                  <td className="jp-mod-numeric">{humanSize(totals.get(o.obsid)?.bytes ?? 0)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
    </article>
  );
}
