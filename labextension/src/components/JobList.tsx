import * as React from 'react';
import { Clipboard } from '@jupyterlab/apputils';

import { count, humanDuration, humanRate, humanSize, shortTime } from '../format';
import {
  bytesMoved,
  errorMessage,
  isTerminal,
  JOB_FILTERS,
  JobFilter,
  jobDuration,
  jobMatches,
  jobProgress,
  JobsModel,
  LogTail
} from '../model';
import { ArchiveClient, IJob } from '../service';
import { useInterval, useSignal } from './hooks';

export interface IJobListProps {
  jobs: JobsModel;
  client: ArchiveClient;
  openFolder: (path: string) => void;
  displayPath: (destination: string) => string;
  /** Open the jobs (and this job's log) in the main area; absent there. */
  openInMain?: (jobId: number | null) => void;
  /** The job whose log is open at first (the main area's jobs page). */
  logOpen?: number | null;
}

const FILTER_LABELS: Record<JobFilter, string> = {
  all: 'All',
  running: 'Running',
  finished: 'Finished',
  failed: 'Failed'
};

/** Every job, newest first, with live progress; filtered, forgotten one by one or all finished at once. */
export function JobList(props: IJobListProps): JSX.Element {
  const { jobs } = props;
  useSignal(jobs.changed);
  const [filter, setFilter] = React.useState<JobFilter>('all');
  const [error, setError] = React.useState<string | null>(null);
  const all = jobs.jobs;
  const list = all.filter(job => jobMatches(job, filter));
  const finished = all.filter(j => j.state === 'succeeded' || j.state === 'cancelled').length;
  // Rates and durations move with time, not only with events: redraw every second while jobs run.
  const [, setTick] = React.useState(0);
  useInterval(() => setTick(t => t + 1), 1000, jobs.hasActive);

  return (
    <section className="jp-HeraStage-jobs" aria-label="Staging jobs">
      <h3 className="jp-HeraStage-sectionTitle">
        Jobs
        <span>
          {props.openInMain && (
            <button
              type="button"
              className="jp-HeraStage-link"
              aria-label="Open the jobs in the main area"
              onClick={() => props.openInMain!(null)}
            >
              Open
            </button>
          )}
          <button
            type="button"
            className="jp-HeraStage-link"
            aria-label="Refresh the jobs"
            onClick={() => void jobs.refresh().catch(() => undefined)}
          >
            Refresh
          </button>
        </span>
      </h3>
      <div className="jp-HeraStage-row jp-HeraStage-jobTools">
        <div className="jp-HeraStage-filters" role="radiogroup" aria-label="Show jobs">
          {JOB_FILTERS.map(f => (
            <button
              key={f}
              type="button"
              role="radio"
              aria-checked={filter === f}
              className={`jp-HeraStage-filter${filter === f ? ' jp-mod-active' : ''}`}
              data-filter={f}
              onClick={() => setFilter(f)}
            >
              {FILTER_LABELS[f]} ({all.filter(job => jobMatches(job, f)).length})
            </button>
          ))}
        </div>
        <button
          type="button"
          className="jp-HeraStage-link jp-HeraStage-clearFinished"
          disabled={!finished}
          title="Forget every job that succeeded or was cancelled (what they staged stays)"
          onClick={() => {
            setError(null);
            jobs.clearFinished().catch(reason => setError(errorMessage(reason)));
          }}
        >
          Clear finished
        </button>
      </div>
      {jobs.error && !jobs.missing && (
        <div className="jp-HeraStage-error jp-HeraStage-jobsError" role="alert">
          {jobs.error}
        </div>
      )}
      {error && (
        <div className="jp-HeraStage-error" role="alert">
          {error}
        </div>
      )}
      {!all.length && <div className="jp-HeraStage-muted">No jobs yet.</div>}
      {all.length > 0 && !list.length && (
        <div className="jp-HeraStage-muted">No {FILTER_LABELS[filter].toLowerCase()} jobs.</div>
      )}
      <ul className="jp-HeraStage-jobList">
        {list.map(job => (
          <JobCard key={job.id} job={job} {...props} />
        ))}
      </ul>
    </section>
  );
}

/** An action's error on a card, and the job state it was about: it goes when the state changes. */
interface ICardError {
  message: string;
  state: string;
}

function JobCard(props: IJobListProps & { job: IJob }): JSX.Element {
  const { job, jobs } = props;
  const [showLog, setShowLog] = React.useState(props.logOpen === job.id);
  const [error, setError] = React.useState<ICardError | null>(null);
  const progress = jobProgress(job);
  const active = !isTerminal(job.state);
  const now = Date.now();
  const speed = jobs.speed(job, now);
  const duration = jobDuration(job, now);
  const act = (fn: () => Promise<void>) => () => {
    setError(null);
    fn().catch(reason => setError({ message: errorMessage(reason), state: job.state }));
  };
  const label = `Job ${job.id}`;
  // undefined: not read yet (a launch reply or an event); null: no marker in the folder.
  const marker = job.marker === undefined ? 'unknown' : (job.marker ?? 'none');
  const where = job.destination ? props.displayPath(job.destination) || '(root folder)' : '?';
  // An error about what the job was doing is gone once the job has moved on.
  const shownError = error && error.state === job.state ? error.message : null;
  return (
    <li
      className={`jp-HeraStage-job jp-mod-${job.state}`}
      data-job-id={job.id}
      data-state={job.state}
      tabIndex={-1}
      aria-label={`${label}, ${job.state}, ${progress.percent}%`}
    >
      <div className="jp-HeraStage-jobHeader">
        <span className="jp-HeraStage-jobTitle" title={job.destination}>
          #{job.id} {job.kind ?? 'stage'} → {where}
        </span>
        <span className={`jp-HeraStage-state jp-mod-${job.state}`}>{job.state}</span>
      </div>
      <div className="jp-HeraStage-jobMeta" data-field="meta">
        <span title="Staging method">{job.method ?? '—'}</span>
        <span title="Started (UTC)">{job.started_at ? `started ${shortTime(job.started_at)}` : 'not started'}</span>
        <span title="How long it ran" data-field="duration">
          {duration === null ? '' : `${active ? 'running for' : 'took'} ${humanDuration(duration)}`}
        </span>
      </div>
      <div
        className="jp-HeraStage-progress"
        role="progressbar"
        aria-label={`${label} progress`}
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={progress.percent}
        aria-valuetext={`${progress.percent}%`}
      >
        <div className="jp-HeraStage-progressBar" style={{ transform: `scaleX(${progress.percent / 100})` }} />
        <span className="jp-HeraStage-progressText">{progress.percent}%</span>
      </div>
      <div className="jp-HeraStage-jobStats">
        <span>
          {count(job.files_done)}/{count(job.files_total)} files
        </span>
        <span data-field="bytes">
          {humanSize(bytesMoved(job))} / {humanSize(job.bytes_total)}
        </span>
        <span data-field="rate" title="Bytes moved over the last 10 s">
          {job.state === 'running' ? (speed.rate === null ? 'measuring…' : humanRate(speed.rate)) : ''}
        </span>
        <span data-field="eta">{job.state === 'running' ? `ETA ${humanDuration(speed.eta)}` : ''}</span>
      </div>
      <div
        className="jp-HeraStage-marker"
        data-marker={marker}
        title="The Librarian's marker file in the destination folder now"
      >
        Marker: <span className="jp-HeraStage-mono">{marker === 'unknown' ? '…' : marker}</span>
      </div>
      {(job.files_failed || job.files_skipped || (job.missing && job.missing.length)) ? (
        <div className="jp-HeraStage-jobNotes">
          {job.files_failed ? `${job.files_failed} failed ` : ''}
          {job.files_skipped ? `${job.files_skipped} already there ` : ''}
          {job.missing && job.missing.length ? `${job.missing.length} missing` : ''}
        </div>
      ) : null}
      {job.error && <div className="jp-HeraStage-error">{job.error}</div>}
      {shownError && (
        <div className="jp-HeraStage-error jp-HeraStage-cardError" role="alert">
          {shownError}
          <button
            type="button"
            className="jp-HeraStage-link"
            aria-label={`Dismiss the message of job ${job.id}`}
            onClick={() => setError(null)}
          >
            ✕
          </button>
        </div>
      )}
      <div className="jp-HeraStage-jobActions">
        {active && (
          <button
            type="button"
            className="jp-Button jp-mod-styled jp-mod-warn jp-HeraStage-cancel"
            aria-label={`Cancel job ${job.id}`}
            onClick={act(() => jobs.cancel(job.id))}
          >
            Cancel
          </button>
        )}
        {(job.state === 'failed' || job.state === 'cancelled') && (
          <button
            type="button"
            className="jp-Button jp-mod-styled jp-HeraStage-retry"
            aria-label={`Retry job ${job.id}`}
            onClick={act(() => jobs.retry(job.id))}
          >
            Retry
          </button>
        )}
        {job.destination && (
          <button
            type="button"
            className="jp-Button jp-mod-styled jp-HeraStage-open"
            aria-label={`Open ${where} in the file browser`}
            onClick={() => props.openFolder(job.destination!)}
          >
            Open folder
          </button>
        )}
        <button
          type="button"
          className="jp-Button jp-mod-styled jp-HeraStage-logToggle"
          aria-expanded={showLog}
          aria-label={`${showLog ? 'Hide' : 'Show'} the log of job ${job.id}`}
          onClick={() => setShowLog(!showLog)}
        >
          {showLog ? 'Hide log' : 'Log'}
        </button>
        {!active && (
          <button
            type="button"
            className="jp-Button jp-mod-styled jp-HeraStage-forget"
            aria-label={`Forget job ${job.id}`}
            title="Remove it from the list (what it staged stays)"
            onClick={act(() => jobs.forget(job.id))}
          >
            Forget
          </button>
        )}
      </div>
      {showLog && (
        <LogView
          client={props.client}
          job={job}
          openInMain={props.openInMain ? () => props.openInMain!(job.id) : undefined}
        />
      )}
    </li>
  );
}

/** The job's log, tailing live while the job runs, following the end unless scrolled up. */
export function LogView(props: { client: ArchiveClient; job: IJob; openInMain?: () => void }): JSX.Element {
  const { job } = props;
  const tail = React.useMemo(() => new LogTail(props.client, job.id), [job.id]);
  const [, setTick] = React.useState(0);
  const [follow, setFollow] = React.useState(true);
  const [copied, setCopied] = React.useState(false);
  const pre = React.useRef<HTMLPreElement>(null);
  const active = !isTerminal(job.state);

  const fetch = React.useCallback(() => {
    void tail.fetch().then(added => added && setTick(t => t + 1));
  }, [tail]);
  React.useEffect(fetch, [tail, job.state]);
  useInterval(fetch, 1000, active);

  React.useLayoutEffect(() => {
    if (follow && pre.current) {
      pre.current.scrollTop = pre.current.scrollHeight;
    }
  });

  return (
    <div className="jp-HeraStage-log">
      <div className="jp-HeraStage-row">
        <label className="jp-HeraStage-follow">
          <input
            type="checkbox"
            checked={follow}
            aria-label={`Follow the end of the log of job ${job.id}`}
            onChange={e => setFollow(e.target.checked)}
          />{' '}
          Follow
        </label>
        <button
          type="button"
          className="jp-HeraStage-link jp-HeraStage-copyLog"
          aria-label={`Copy the log of job ${job.id}`}
          onClick={() => {
            Clipboard.copyToSystem(tail.text);
            setCopied(true);
            window.setTimeout(() => setCopied(false), 1500);
          }}
        >
          {copied ? 'Copied' : 'Copy'}
        </button>
        {props.openInMain && (
          <button
            type="button"
            className="jp-HeraStage-link"
            aria-label={`Open the log of job ${job.id} in the main area`}
            onClick={props.openInMain}
          >
            Open in main area
          </button>
        )}
      </div>
      <pre
        ref={pre}
        className="jp-HeraStage-pre"
        tabIndex={0}
        aria-label={`Log of job ${job.id}`}
        onScroll={e => {
          const node = e.target as HTMLPreElement;
          const atEnd = node.scrollHeight - node.scrollTop - node.clientHeight < 8;
          if (atEnd !== follow) {
            setFollow(atEnd);
          }
        }}
      >
        {tail.text || (tail.error ? tail.error : 'The log is empty so far.')}
      </pre>
    </div>
  );
}
