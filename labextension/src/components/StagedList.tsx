import * as React from 'react';
import { Dialog, showDialog } from '@jupyterlab/apputils';

import { count, humanSize, plural } from '../format';
import { CleanTarget, expiryText, hasExpired, ICleanPlan, StagedModel, stateText } from '../staged';
import { IStagedFolder } from '../service';
import { useSignal } from './hooks';

export interface IStagedListProps {
  staged: StagedModel;
  openFolder: (path: string) => void;
  /** A destination as shown to the user (relative to the Jupyter root when inside it). */
  displayPath: (destination: string) => string;
  /** Read the folders when shown (the main area's page; the side panel reads them when it shows). */
  refreshOnMount?: boolean;
}

/** The confirmation of a clean: what the dry run says would go, and what stays and why. */
export async function confirmClean(
  plan: ICleanPlan,
  target: CleanTarget,
  displayPath: (p: string) => string
): Promise<boolean> {
  const title = 'expired' in target ? 'Clean expired staged folders?' : 'Remove this staged folder?';
  const body = (
    <div className="jp-HeraStage-cleanPlan">
      <p>
        {plan.files
          ? `This removes ${plural(plan.files, 'staged file')} (${humanSize(plan.bytes)}): the files as they were staged, checked by checksum. Anything else in the folders stays.`
          : 'Nothing staged is left to remove here.'}
      </p>
      <ul>
        {plan.folders.map(f => (
          <li key={f.destination} data-destination={f.destination}>
            <span className="jp-HeraStage-mono" title={f.destination}>
              {displayPath(f.destination) || '(root folder)'}
            </span>
            {`: ${f.files ? `${plural(f.files, 'file')}, ${humanSize(f.bytes)}` : 'nothing to remove'} (${f.state})`}
            {f.kept.length > 0 && (
              <ul className="jp-HeraStage-cleanKept">
                {f.kept.map(line => (
                  <li key={line}>{line}</li>
                ))}
              </ul>
            )}
          </li>
        ))}
      </ul>
    </div>
  );
  const result = await showDialog({
    title,
    body,
    buttons: plan.actionable
      ? [Dialog.cancelButton(), Dialog.warnButton({ label: 'Remove', ariaLabel: 'Remove the staged files' })]
      : [Dialog.okButton({ label: 'Close' })],
    // Enter does not remove: the focus starts on Cancel.
    defaultButton: 0
  });
  return plan.actionable && result.button.accept;
}

const STATE_TITLES: Record<string, string> = {
  intact: 'Every staged file is there, as staged, and nothing else',
  changed: 'Staged files missing or changed, or files of yours beside them (those stay)',
  gone: 'The folder is not there any more',
  moved: 'The path leads elsewhere now: nothing is read or removed through it',
  busy: 'A job still stages into it',
  unchecked: 'Not checked'
};

/** The user's staged folders: size, expiry, state; what they hold where; clean expired or one. */
export function StagedList(props: IStagedListProps): JSX.Element {
  const { staged, displayPath } = props;
  useSignal(staged.changed);
  React.useEffect(() => {
    if (props.refreshOnMount) {
      void staged.refresh();
    }
  }, [staged]);
  const view = staged.view;
  const folders = view?.folders ?? [];
  const expired = folders.filter(f => hasExpired(f));
  // Whether this list (the side panel's or the main area's, which share the model) started
  // the clean under way: its outcome takes the focus there only.
  const startedHere = React.useRef(false);
  const run = (target: CleanTarget) => {
    startedHere.current = true;
    void staged.clean(target, (plan, t) => confirmClean(plan, t, displayPath), displayPath);
  };
  const outcome = staged.outcome;
  // After a clean the button that started it may be gone (its folder's card): put the focus
  // on what the clean did, which a screen reader then reads.
  const outcomeNode = React.useRef<HTMLDivElement>(null);
  React.useEffect(() => {
    if (outcome && startedHere.current && outcomeNode.current) {
      startedHere.current = false;
      outcomeNode.current.focus();
    }
  }, [outcome]);

  return (
    <section className="jp-HeraStage-staged" aria-label="Staged data" aria-busy={staged.loading || staged.cleaning}>
      <h3 className="jp-HeraStage-sectionTitle">
        Staged data
        <span>
          <button
            type="button"
            className="jp-HeraStage-link jp-HeraStage-stagedRefresh"
            aria-label="Refresh the staged folders"
            onClick={() => void staged.refresh()}
          >
            Refresh
          </button>
        </span>
      </h3>
      {view && (
        <div className="jp-HeraStage-stagedTotals" data-field="totals">
          <div>
            {humanSize(view.total_bytes)} in {plural(folders.length, 'folder')}
            {view.expired_bytes ? `, ${humanSize(view.expired_bytes)} expired` : ''}
          </div>
          {view.quota_bytes !== null && view.quota_bytes !== undefined && (
            <div data-field="quota">
              Quota: {humanSize(view.unexpired_bytes)} of {humanSize(view.quota_bytes)} used (unexpired)
            </div>
          )}
          {view.by_root && Object.keys(view.by_root).length > 0 && (
            <ul className="jp-HeraStage-stagedRoots" aria-label="Staged data per place">
              {Object.entries(view.by_root).map(([root, bytes]) => (
                <li key={root}>
                  {humanSize(bytes)} under <span className="jp-HeraStage-mono">{root || 'other places'}</span>
                </li>
              ))}
            </ul>
          )}
        </div>
      )}
      <div className="jp-HeraStage-row">
        <button
          type="button"
          className="jp-Button jp-mod-styled jp-mod-warn jp-HeraStage-cleanExpired"
          disabled={staged.cleaning || !expired.length}
          title="Remove the staged files of every expired folder (a preview comes first)"
          onClick={() => run({ expired: true })}
        >
          Clean expired{expired.length ? ` (${count(expired.length)})` : ''}
        </button>
      </div>
      {staged.error && (
        <div className="jp-HeraStage-error jp-HeraStage-stagedError" role="alert">
          {staged.error}
        </div>
      )}
      {outcome && (
        <div
          className={`${outcome.kind === 'error' ? 'jp-HeraStage-error' : 'jp-HeraStage-notice'} jp-HeraStage-cleanOutcome`}
          data-kind={outcome.kind}
          role={outcome.kind === 'error' ? 'alert' : 'status'}
          ref={outcomeNode}
          tabIndex={-1}
        >
          {outcome.message}
          {outcome.kept.length > 0 && (
            <ul className="jp-HeraStage-cleanKept">
              {outcome.kept.map(line => (
                <li key={line}>{line}</li>
              ))}
            </ul>
          )}
          <button
            type="button"
            className="jp-HeraStage-link"
            aria-label="Dismiss the message of the clean"
            onClick={() => staged.dismissOutcome()}
          >
            ✕
          </button>
        </div>
      )}
      {view && !folders.length && <div className="jp-HeraStage-muted">No staged folders.</div>}
      {!view && !staged.error && <div className="jp-HeraStage-muted">Loading…</div>}
      <ul className="jp-HeraStage-stagedList">
        {folders.map(folder => (
          <StagedFolder key={folder.destination} folder={folder} {...props} onRemove={() => run({ folders: [folder.destination] })} />
        ))}
      </ul>
    </section>
  );
}

function StagedFolder(props: IStagedListProps & { folder: IStagedFolder; onRemove: () => void }): JSX.Element {
  const { folder, staged } = props;
  const where = props.displayPath(folder.destination) || '(root folder)';
  const expired = hasExpired(folder);
  return (
    <li
      className={`jp-HeraStage-stagedFolder jp-mod-${folder.state}${expired ? ' jp-mod-expired' : ''}`}
      data-destination={folder.destination}
      data-state={folder.state}
      data-expired={expired}
      aria-label={`Staged folder ${where}, ${folder.state}${expired ? ', expired' : ''}`}
    >
      <div className="jp-HeraStage-stagedPath jp-HeraStage-mono" title={folder.destination}>
        {where}
      </div>
      <div className="jp-HeraStage-jobMeta">
        {expired && <span className="jp-HeraStage-state jp-mod-expired">expired</span>}
        <span className={`jp-HeraStage-state jp-mod-${folder.state}`} title={STATE_TITLES[folder.state] ?? ''}>
          {folder.state}
        </span>
        <span data-field="size">
          {plural(folder.files, 'file')}, {humanSize(folder.bytes)}
        </span>
        <span data-field="expiry">{expiryText(folder)}</span>
        <span title="The jobs that staged into it">{folder.jobs.map(id => `#${id}`).join(' ')}</span>
      </div>
      {folder.state !== 'intact' && (
        <div className="jp-HeraStage-jobNotes" data-field="state">
          {stateText(folder)}
        </div>
      )}
      <div className="jp-HeraStage-jobActions">
        {folder.state !== 'gone' && (
          <button
            type="button"
            className="jp-Button jp-mod-styled jp-HeraStage-open"
            aria-label={`Open ${where} in the file browser`}
            onClick={() => props.openFolder(folder.destination)}
          >
            Open folder
          </button>
        )}
        <button
          type="button"
          className="jp-Button jp-mod-styled jp-mod-warn jp-HeraStage-remove"
          disabled={staged.cleaning}
          aria-label={`Remove the staged files of ${where}`}
          title="Remove what is still the staged data (a preview comes first); your own files stay"
          onClick={props.onRemove}
        >
          Remove
        </button>
      </div>
    </li>
  );
}
