import * as React from 'react';

import { humanSize, plural } from '../format';
import { describeTarget, isTerminal, JobsModel, SearchModel, StageModel } from '../model';
import { STAGE_METHODS, StageMethod } from '../service';
import { useSignal } from './hooks';

export interface IStageBoxProps {
  stage: StageModel;
  search: SearchModel;
  /** The jobs, to say when another one is writing into the destination. */
  jobs: JobsModel;
  /** The file browser's current folder, as a destination. */
  browserFolder: () => string | null;
  /** Pick a folder in a dialog (null: cancelled); absent without a file browser. */
  pickFolder: ((current: string) => Promise<string | null>) | null;
}

/** Destination, method, "stage selected" / "stage all results", and the dry-run preview. */
export function StageBox(props: IStageBoxProps): JSX.Element {
  const { stage, search } = props;
  useSignal(stage.changed);
  useSignal(search.changed);
  useSignal(props.jobs.changed);
  const selected = search.selectedNames();
  const allTarget = search.allResultsTarget();
  const preview = stage.preview;
  const confirmRef = React.useRef<HTMLButtonElement>(null);
  const section = React.useRef<HTMLElement>(null);
  // The button that asked for the preview gets the focus back when it closes.
  const opener = React.useRef<HTMLElement | null>(null);

  React.useEffect(() => {
    if (preview) {
      confirmRef.current?.focus();
    }
  }, [preview]);

  const ask = (event: React.MouseEvent<HTMLElement>, target: Parameters<StageModel['previewTarget']>[0]) => {
    opener.current = event.currentTarget;
    void stage.previewTarget(target);
  };
  /** Keep the focus in the panel when the preview goes: on the new job's card, else the opener. */
  const refocus = (jobId: number | null) => {
    window.setTimeout(() => {
      const root = section.current?.closest('.jp-HeraStage-view');
      const card = jobId !== null ? root?.querySelector<HTMLElement>(`.jp-HeraStage-job[data-job-id='${jobId}']`) : null;
      const fallback = opener.current && opener.current.isConnected && !(opener.current as HTMLButtonElement).disabled
        ? opener.current
        : root?.querySelector<HTMLElement>('#jp-HeraStage-destination');
      (card ?? fallback)?.focus();
    }, 0);
  };
  // Another active job of ours writing into the previewed folder: this one would be refused.
  const busy = preview
    ? props.jobs.jobs.find(j => !isTerminal(j.state) && j.destination === preview.destination)
    : undefined;
  const staleNote = search.stale ? 'The results shown are not those of the search in the box: search again first' : undefined;

  return (
    <section ref={section} className="jp-HeraStage-stage" aria-label="Stage files">
      <div className="jp-HeraStage-row">
        <label className="jp-HeraStage-label" htmlFor="jp-HeraStage-destination">
          Into
        </label>
        <input
          id="jp-HeraStage-destination"
          className="jp-mod-styled jp-HeraStage-grow"
          aria-label="Destination folder (relative to the Jupyter root)"
          value={stage.destination}
          onChange={e => stage.set({ destination: e.target.value })}
        />
        <button
          type="button"
          className="jp-Button jp-mod-styled jp-HeraStage-iconButton"
          title="Use the file browser's current folder"
          aria-label="Use the file browser's current folder"
          onClick={() => {
            const folder = props.browserFolder();
            if (folder !== null) {
              stage.set({ destination: folder });
            }
          }}
        >
          ⤓
        </button>
        {props.pickFolder && (
          <button
            type="button"
            className="jp-Button jp-mod-styled jp-HeraStage-iconButton jp-HeraStage-browse"
            title="Choose the destination folder"
            aria-label="Choose the destination folder"
            aria-haspopup="dialog"
            onClick={() => {
              const pick = props.pickFolder!;
              void pick(stage.destination)
                .then(folder => folder !== null && stage.set({ destination: folder }))
                .catch(reason => console.warn('hera_stage_ext: folder dialog', reason));
            }}
          >
            …
          </button>
        )}
      </div>
      <div className="jp-HeraStage-row">
        <label className="jp-HeraStage-visuallyHidden" htmlFor="jp-HeraStage-method">
          Method
        </label>
        <select
          id="jp-HeraStage-method"
          className="jp-mod-styled"
          aria-label="Staging method"
          value={stage.method}
          onChange={e => stage.set({ method: e.target.value as StageMethod })}
        >
          {STAGE_METHODS.map(m => (
            <option key={m} value={m}>
              {m}
            </option>
          ))}
        </select>
        <button
          type="button"
          className="jp-Button jp-mod-styled jp-HeraStage-stageSelected"
          disabled={!selected.length || stage.busy}
          title={staleNote}
          onClick={e => ask(e, { names: selected })}
        >
          Stage selected ({selected.length.toLocaleString('en-US')})
        </button>
        <button
          type="button"
          className="jp-Button jp-mod-styled jp-HeraStage-stageAll"
          disabled={!allTarget || stage.busy}
          title={
            staleNote ??
            (search.rowsKind !== 'files' ? 'Open an observation or a session to stage its files' : undefined)
          }
          onClick={e => allTarget && ask(e, allTarget)}
        >
          Stage all results
          {allTarget && search.total !== null ? ` (${search.total.toLocaleString('en-US')})` : ''}
        </button>
      </div>
      {stage.busy && !preview && <div className="jp-HeraStage-muted">Asking the server…</div>}
      {stage.error && (
        <div className="jp-HeraStage-error" role="alert">
          {stage.error}
        </div>
      )}
      {preview && stage.target && (
        <div className="jp-HeraStage-preview" role="region" aria-label="Dry-run preview">
          <div className="jp-HeraStage-previewTitle">
            Preview: stage {describeTarget(stage.target)}
          </div>
          <dl className="jp-HeraStage-fields">
            <dt>Files</dt>
            <dd data-field="files">{plural(preview.files, 'file')}</dd>
            <dt>Bytes</dt>
            <dd data-field="bytes">{humanSize(preview.bytes)}</dd>
            <dt>Missing</dt>
            <dd data-field="missing">
              {preview.missing.length
                ? `${preview.missing.length}: ${preview.missing.slice(0, 5).join(', ')}${
                    preview.missing.length > 5 ? ', …' : ''
                  }`
                : 'none'}
            </dd>
            <dt>Already there</dt>
            <dd data-field="already">
              {preview.already_there === null || preview.already_there === undefined
                ? 'unknown'
                : preview.already_there
                  ? `${plural(preview.already_there, 'file')} will be checked and skipped`
                  : 'none'}
            </dd>
            <dt>Free space</dt>
            <dd data-field="free">
              {humanSize(preview.free_bytes)}
              {preview.fits ? '' : ` — not enough (needs ${humanSize(preview.bytes_needed ?? preview.bytes)})`}
            </dd>
            <dt>Into</dt>
            <dd>
              {preview.destination} ({preview.method})
            </dd>
          </dl>
          {busy && (
            <div className="jp-HeraStage-error jp-HeraStage-busy" role="alert">
              Job {busy.id} is writing into this folder now: wait for it to end, or choose another folder.
            </div>
          )}
          <div className="jp-HeraStage-row">
            <button
              ref={confirmRef}
              type="button"
              className="jp-Button jp-mod-styled jp-mod-accept jp-HeraStage-confirm"
              disabled={stage.busy || preview.files === 0 || busy !== undefined}
              onClick={() => void stage.confirm(!preview.fits).then(job => refocus(job ? job.id : null))}
            >
              {preview.fits ? 'Start staging' : 'Stage anyway'}
            </button>
            <button
              type="button"
              className="jp-Button jp-mod-styled jp-mod-reject"
              onClick={() => {
                stage.dismiss();
                refocus(null);
              }}
            >
              Cancel
            </button>
          </div>
        </div>
      )}
    </section>
  );
}
