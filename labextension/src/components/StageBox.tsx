import * as React from 'react';

import { humanSize, plural } from '../format';
import { describeTarget, SearchModel, StageModel, targetOfSearch } from '../model';
import { STAGE_METHODS, StageMethod } from '../service';
import { useSignal } from './hooks';

export interface IStageBoxProps {
  stage: StageModel;
  search: SearchModel;
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
  const selected = search.selectedNames();
  const canStageAll =
    search.searched && search.rowsKind === 'files' && search.lastBody !== null && search.rows.length > 0;
  const preview = stage.preview;
  const confirmRef = React.useRef<HTMLButtonElement>(null);

  React.useEffect(() => {
    if (preview) {
      confirmRef.current?.focus();
    }
  }, [preview]);

  return (
    <section className="jp-HeraStage-stage" aria-label="Stage files">
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
          onClick={() => void stage.previewTarget({ names: selected })}
        >
          Stage selected ({selected.length.toLocaleString('en-US')})
        </button>
        <button
          type="button"
          className="jp-Button jp-mod-styled jp-HeraStage-stageAll"
          disabled={!canStageAll || stage.busy}
          title={
            search.rowsKind !== 'files'
              ? 'Open an observation or a session to stage its files'
              : undefined
          }
          onClick={() => search.lastBody && void stage.previewTarget(targetOfSearch(search.lastBody))}
        >
          Stage all results
          {canStageAll && search.total !== null ? ` (${search.total.toLocaleString('en-US')})` : ''}
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
          <div className="jp-HeraStage-row">
            <button
              ref={confirmRef}
              type="button"
              className="jp-Button jp-mod-styled jp-mod-accept jp-HeraStage-confirm"
              disabled={stage.busy || preview.files === 0}
              onClick={() => void stage.confirm(!preview.fits)}
            >
              {preview.fits ? 'Start staging' : 'Stage anyway'}
            </button>
            <button
              type="button"
              className="jp-Button jp-mod-styled jp-mod-reject"
              onClick={() => stage.dismiss()}
            >
              Cancel
            </button>
          </div>
        </div>
      )}
    </section>
  );
}
