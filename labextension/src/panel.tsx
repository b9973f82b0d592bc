import * as React from 'react';
import { LabIcon, ReactWidget } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';

import { DetailView } from './components/DetailView';
import { JobList } from './components/JobList';
import { ResultsTable } from './components/ResultsTable';
import { SearchBox } from './components/SearchBox';
import { StageBox } from './components/StageBox';
import { StagedList } from './components/StagedList';
import { errorMessage, isMissing, JobsModel, SearchModel, StageModel } from './model';
import { useInterval } from './components/hooks';
import { ApiError, ArchiveClient, ISearchRequest, SearchKind } from './service';
import { StagedModel } from './staged';

/** How often (ms) the archive's counts are read again while the panel shows (ingests happen elsewhere). */
export const COUNTS_INTERVAL_MS = 10 * 1000;

/** An archive box. */
const ARCHIVE_SVG = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">
  <g class="jp-icon3" fill="#616161">
    <path d="M3 3h18a1 1 0 0 1 1 1v3a1 1 0 0 1-1 1H3a1 1 0 0 1-1-1V4a1 1 0 0 1 1-1zm1 6h16v10a2 2 0 0 1-2 2H6a2 2 0 0 1-2-2V9zm5 3a1 1 0 0 0 0 2h6a1 1 0 1 0 0-2H9z"/>
  </g>
</svg>`;

export const archiveIcon = new LabIcon({ name: 'hera_stage_ext:archive', svgstr: ARCHIVE_SVG });

export const PANEL_ID = 'hera-stage-panel';

export interface IArchivePanelOptions {
  client: ArchiveClient;
  search: SearchModel;
  stage: StageModel;
  jobs: JobsModel;
  /** The user's staged folders (read when the panel shows and when a job ends). */
  staged: StagedModel;
  /** The file browser's current folder as a destination, or null without a file browser. */
  browserFolder: () => string | null;
  /** Choose a destination folder in a dialog (null: cancelled), or null without a file browser. */
  pickFolder: ((current: string) => Promise<string | null>) | null;
  openFolder: (path: string) => void;
  /** A job's destination as shown to the user. */
  displayPath: (destination: string) => string;
  /** Open the main-area view: the results, a row's page, or the jobs (and one job's log). */
  openMain: (page?: { kind: SearchKind; key: string } | { jobs: true; job?: number | null }) => void;
}

/** Ask the server whether a search is valid (a one-row search): null, or its message. */
export function serverValidator(client: ArchiveClient) {
  return async (request: Pick<ISearchRequest, 'query' | 'search'>, kind: SearchKind): Promise<string | null> => {
    try {
      await client.search({ ...request, kind, limit: 1 });
      return null;
    } catch (reason) {
      return errorMessage(reason);
    }
  };
}

type Connection =
  | { state: 'checking' }
  | { state: 'ok'; files: number | null; site: string | null }
  | { state: 'missing' | 'error'; message: string };

/** The side panel: search, results, detail, stage, jobs. */
export class ArchivePanel extends ReactWidget {
  constructor(options: IArchivePanelOptions) {
    super();
    this._options = options;
    this.id = PANEL_ID;
    this.addClass('jp-HeraStage-panel');
    this.title.icon = archiveIcon;
    this.title.caption = 'HERA archive: search, stage, jobs';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'HERA archive');
  }

  /** Focus the query box (or the JSON editor). */
  focusQuery(): void {
    const input = this.node.querySelector<HTMLElement>('.jp-HeraStage-query, .jp-HeraStage-json');
    input?.focus();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this._options.jobs.setVisible(true);
    this.update();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this._options.jobs.setVisible(false);
    this.update();
  }

  protected onActivateRequest(msg: Message): void {
    super.onActivateRequest(msg);
    this.focusQuery();
  }

  render(): JSX.Element {
    return <ArchiveView {...this._options} visible={this.isVisible} />;
  }

  private _options: IArchivePanelOptions;
}

function ArchiveView(props: IArchivePanelOptions & { visible: boolean }): JSX.Element {
  const { client, search, stage, jobs, staged } = props;
  const [connection, setConnection] = React.useState<Connection>({ state: 'checking' });

  const check = React.useCallback((quiet = false) => {
    if (!quiet) {
      setConnection({ state: 'checking' });
    }
    client
      .status()
      .then(status => {
        const counts = status.counts as Record<string, number> | undefined;
        setConnection({
          state: 'ok',
          files: typeof counts?.files === 'number' ? counts.files : null,
          site: typeof status.site_name === 'string' ? status.site_name : null
        });
        if (!quiet) {
          void jobs.refresh().catch(() => undefined);
        }
      })
      .catch(reason =>
        setConnection({
          state: isMissing(reason) ? 'missing' : 'error',
          message:
            errorMessage(reason) +
            (reason instanceof ApiError && reason.status && !isMissing(reason)
              ? ` (HTTP ${reason.status})`
              : '')
        })
      );
  }, [client]);
  React.useEffect(() => check(), [check]);
  // Files arrive by ingests elsewhere (the CLI, a transfer, another server): read the counts
  // again now and then while the panel shows. A job that ends may have added files too.
  useInterval(() => check(true), COUNTS_INTERVAL_MS, props.visible && connection.state === 'ok');
  // The staged folders: read when the panel shows (the CLI may have cleaned some) and when a
  // job ends (a new staged folder).
  const online = connection.state === 'ok';
  React.useEffect(() => {
    if (props.visible && online) {
      void staged.refresh();
    }
  }, [staged, props.visible, online]);
  React.useEffect(() => {
    const onEnded = () => {
      check(true);
      void staged.refresh();
    };
    jobs.jobEnded.connect(onEnded);
    return () => {
      jobs.jobEnded.disconnect(onEnded);
    };
  }, [jobs, staged, check]);

  const validate = React.useMemo(() => serverValidator(client), [client]);

  const header = (
    <header className="jp-HeraStage-header">
      <h2>HERA archive</h2>
      <button
        type="button"
        className="jp-HeraStage-link jp-HeraStage-openMain"
        title="Open the archive in a main-area tab (every column, pages, jobs)"
        aria-label="Open the archive in the main area"
        onClick={() => props.openMain()}
      >
        ⤢
      </button>
      <span className="jp-HeraStage-muted jp-HeraStage-counts" aria-live="polite">
        {connection.state === 'ok'
          ? `${connection.site ? connection.site + ' · ' : ''}${
              connection.files !== null ? connection.files.toLocaleString('en-US') + ' files' : 'connected'
            }`
          : connection.state === 'checking'
            ? 'connecting…'
            : ''}
      </span>
    </header>
  );

  if (connection.state === 'missing' || connection.state === 'error') {
    return (
      <div className="jp-HeraStage-view">
        {header}
        <div className="jp-HeraStage-unavailable" role="alert">
          <strong>
            {connection.state === 'missing'
              ? 'The archive server extension is missing.'
              : 'The archive server answered with an error.'}
          </strong>
          <p>{connection.message}</p>
          {connection.state === 'error' && (
            <p>
              The Jupyter server&apos;s log says more. Try again in a moment; if the error
              stays, tell whoever runs this server.
            </p>
          )}
          {connection.state === 'missing' && (
            <p>
              Install the <code>hera_stage_ext</code> Python package in the environment that runs
              Jupyter, enable it with <code>jupyter server extension enable hera_stage_ext</code>,
              and restart the server.
            </p>
          )}
          <button type="button" className="jp-Button jp-mod-styled jp-mod-accept" onClick={() => check()}>
            Try again
          </button>
        </div>
      </div>
    );
  }

  return (
    <div className="jp-HeraStage-view">
      {header}
      <SearchBox model={search} validate={validate} />
      <ResultsTable model={search} compact />
      <DetailView
        model={search}
        client={client}
        onStage={target => void stage.previewTarget(target)}
        onOpenPage={(kind, key) => props.openMain({ kind, key })}
      />
      <StageBox
        stage={stage}
        search={search}
        jobs={jobs}
        browserFolder={props.browserFolder}
        pickFolder={props.pickFolder}
      />
      <JobList
        jobs={jobs}
        client={client}
        openFolder={props.openFolder}
        displayPath={props.displayPath}
        openInMain={job => props.openMain({ jobs: true, job })}
      />
      <StagedList staged={staged} openFolder={props.openFolder} displayPath={props.displayPath} />
    </div>
  );
}
