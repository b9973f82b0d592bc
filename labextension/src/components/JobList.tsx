import * as React from 'react';

import { count, humanDuration, humanRate, humanSize } from '../format';
import { errorMessage, isTerminal, jobProgress, JobsModel, LogTail } from '../model';
import { ArchiveClient, IJob } from '../service';
import { useInterval, useSignal } from './hooks';

export interface IJobListProps {
  jobs: JobsModel;
  client: ArchiveClient;
  openFolder: (path: string) => void;
  displayPath: (destination: string) => string;
}

/** Every job, newest first, with live progress. */
export function JobList(props: IJobListProps): JSX.Element {
  const { jobs } = props;
  useSignal(jobs.changed);
  const list = jobs.jobs;
  return (
    <section className="jp-HeraStage-jobs" aria-label="Staging jobs">
      <h3 className="jp-HeraStage-sectionTitle">
        Jobs
        <button
          type="button"
          className="jp-HeraStage-link"
          aria-label="Refresh the jobs"
          onClick={() => void jobs.refresh().catch(() => undefined)}
        >
          Refresh
        </button>
      </h3>
      {jobs.error && !jobs.missing && (
        <div className="jp-HeraStage-error" role="alert">
          {jobs.error}
        </div>
      )}
      {!list.length && <div className="jp-HeraStage-muted">No jobs yet.</div>}
      <ul className="jp-HeraStage-jobList">
        {list.map(job => (
          <JobCard key={job.id} job={job} {...props} />
        ))}
      </ul>
    </section>
  );
}

function JobCard(props: IJobListProps & { job: IJob }): JSX.Element {
  const { job, jobs } = props;
  const [showLog, setShowLog] = React.useState(false);
  const [error, setError] = React.useState<string | null>(null);
  const progress = jobProgress(job);
  const active = !isTerminal(job.state);
  const act = (fn: () => Promise<void>) => () => {
    setError(null);
    fn().catch(reason => setError(errorMessage(reason)));
  };
  const label = `Job ${job.id}`;
  // undefined: not read yet (a launch reply or an event); null: no marker in the folder.
  const marker = job.marker === undefined ? 'unknown' : (job.marker ?? 'none');
  const where = job.destination ? props.displayPath(job.destination) || '(root folder)' : '?';
  return (
    <li
      className={`jp-HeraStage-job jp-mod-${job.state}`}
      data-job-id={job.id}
      data-state={job.state}
      aria-label={`${label}, ${job.state}, ${progress.percent}%`}
    >
      <div className="jp-HeraStage-jobHeader">
        <span className="jp-HeraStage-jobTitle" title={job.destination}>
          #{job.id} {job.kind ?? 'stage'} → {where}
        </span>
        <span className={`jp-HeraStage-state jp-mod-${job.state}`}>{job.state}</span>
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
        <span>
          {humanSize(job.bytes_done)} / {humanSize(job.bytes_total)}
        </span>
        <span>{active ? humanRate(job.rate_bytes_per_s) : ''}</span>
        <span>{active ? `ETA ${humanDuration(job.eta_s)}` : ''}</span>
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
      {error && (
        <div className="jp-HeraStage-error" role="alert">
          {error}
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
      </div>
      {showLog && <LogView client={props.client} job={job} />}
    </li>
  );
}

/** The job's log, tailing live while the job runs, following the end unless scrolled up. */
function LogView(props: { client: ArchiveClient; job: IJob }): JSX.Element {
  const { job } = props;
  const tail = React.useMemo(() => new LogTail(props.client, job.id), [job.id]);
  const [, setTick] = React.useState(0);
  const [follow, setFollow] = React.useState(true);
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
      <label className="jp-HeraStage-follow">
        <input
          type="checkbox"
          checked={follow}
          aria-label={`Follow the end of the log of job ${job.id}`}
          onChange={e => setFollow(e.target.checked)}
        />{' '}
        Follow
      </label>
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
