import * as React from 'react';
import { Clipboard } from '@jupyterlab/apputils';

import { humanSize, shortTime } from '../format';
import { errorMessage, fixityBadge, SearchModel } from '../model';
import { ArchiveClient, IFileDetail, IObservation, ISession, SearchKind, StageTarget } from '../service';
import { useSignal } from './hooks';

export interface IDetailViewProps {
  model: SearchModel;
  client: ArchiveClient;
  onStage: (target: StageTarget) => void;
  /** Open the row's page in the main area. */
  onOpenPage?: (kind: SearchKind, key: string) => void;
}

/** A small button that copies `text` and says so for a moment. */
export function CopyButton(props: { text: string; label: string }): JSX.Element {
  const [copied, setCopied] = React.useState(false);
  React.useEffect(() => {
    if (!copied) {
      return;
    }
    const handle = setTimeout(() => setCopied(false), 1500);
    return () => clearTimeout(handle);
  }, [copied]);
  return (
    <button
      type="button"
      className="jp-HeraStage-link jp-HeraStage-copy"
      aria-label={props.label}
      title={props.label}
      onClick={() => {
        Clipboard.copyToSystem(props.text);
        setCopied(true);
      }}
    >
      {copied ? 'copied' : 'copy'}
    </button>
  );
}

/** The detail of the row clicked: a file (instances, checksums, metadata, events), an observation or a session. */
export function DetailView(props: IDetailViewProps): JSX.Element | null {
  const { model, client } = props;
  useSignal(model.changed);
  const key = model.detailKey;
  const kind = model.rowsKind;
  const [detail, setDetail] = React.useState<IFileDetail | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const heading = React.useRef<HTMLHeadingElement>(null);
  const section = React.useRef<HTMLElement>(null);

  React.useEffect(() => {
    setDetail(null);
    setError(null);
    if (!key || kind !== 'files') {
      return;
    }
    let live = true;
    client
      .file(key)
      .then(d => live && setDetail(d))
      .catch(reason => live && setError(errorMessage(reason)));
    return () => {
      live = false;
    };
  }, [key, kind]);

  React.useEffect(() => {
    if (key) {
      heading.current?.focus();
    }
  }, [key]);

  if (!key) {
    return null;
  }
  /** Close, and give the focus back to the results (never to the page's body). */
  const close = () => {
    const view = section.current?.closest('.jp-HeraStage-view');
    model.showDetail(null);
    view?.querySelector<HTMLElement>('.jp-HeraStage-grid')?.focus();
  };
  const row = model.rows.find(r => model.key(r) === key);

  let body: JSX.Element;
  let target: StageTarget;
  let stageLabel: string;
  if (kind === 'files') {
    target = { names: [key] };
    stageLabel = 'Stage this file';
    body = error ? (
      <div className="jp-HeraStage-error" role="alert">
        {error}
      </div>
    ) : !detail ? (
      <div className="jp-HeraStage-muted">Loading…</div>
    ) : (
      <FileDetailBody
        detail={detail}
        onObservation={props.onOpenPage ? obsid => props.onOpenPage!('observations', String(obsid)) : undefined}
      />
    );
  } else if (kind === 'observations') {
    const obs = row as IObservation | undefined;
    target = { query: `obsid:${key}` };
    stageLabel = 'Stage all its files';
    body = obs ? (
      <dl className="jp-HeraStage-fields">
        <dt>Obsid</dt>
        <dd>{obs.obsid}</dd>
        <dt>Session</dt>
        <dd>{obs.session_id ?? '—'}</dd>
        <dt>Start JD</dt>
        <dd>{obs.start_time_jd}</dd>
        <dt>Stop JD</dt>
        <dd>{obs.stop_time_jd}</dd>
        <dt>Start LST</dt>
        <dd>{obs.start_lst_hr.toFixed(4)} h</dd>
      </dl>
    ) : (
      <div />
    );
  } else {
    const session = row as ISession | undefined;
    target = { query: `session:${key}` };
    stageLabel = 'Stage all its files';
    body = session ? (
      <dl className="jp-HeraStage-fields">
        <dt>Session</dt>
        <dd>{session.id}</dd>
        <dt>Start JD</dt>
        <dd>{session.start_time_jd}</dd>
        <dt>Stop JD</dt>
        <dd>{session.stop_time_jd}</dd>
      </dl>
    ) : (
      <div />
    );
  }

  return (
    <section
      ref={section}
      className="jp-HeraStage-detail"
      aria-label={`Detail of ${key}`}
      onKeyDown={e => {
        if (e.key === 'Escape') {
          e.stopPropagation();
          close();
        }
      }}
    >
      <div className="jp-HeraStage-detailHeader">
        <h3 tabIndex={-1} ref={heading} title={key}>
          {kind === 'files' ? key : `${kind === 'observations' ? 'Observation' : 'Session'} ${key}`}
        </h3>
        <button
          type="button"
          className="jp-Button jp-mod-styled jp-mod-accept"
          onClick={() => props.onStage(target)}
        >
          {stageLabel}
        </button>
        {props.onOpenPage && (
          <button
            type="button"
            className="jp-Button jp-mod-styled jp-HeraStage-openPage"
            title="Open its page in the main area"
            onClick={() => props.onOpenPage!(kind, key)}
          >
            Page
          </button>
        )}
        <button
          type="button"
          className="jp-Button jp-mod-styled jp-mod-reject jp-HeraStage-close"
          aria-label="Close detail"
          title="Close (Escape)"
          onClick={close}
        >
          ✕
        </button>
      </div>
      {body}
    </section>
  );
}

/** A file's fields, checksums (with copy buttons), instances, metadata and events. */
export function FileDetailBody(props: {
  detail: IFileDetail;
  /** Open an observation's page (the obsid becomes a link). */
  onObservation?: (obsid: number) => void;
}): JSX.Element {
  const d = props.detail;
  const metadata = d.metadata && Object.keys(d.metadata).length ? d.metadata : null;
  return (
    <div className="jp-HeraStage-detailBody">
      <dl className="jp-HeraStage-fields">
        <dt>Type</dt>
        <dd>{d.type}{d.is_directory ? ' (directory)' : ''}</dd>
        <dt>Size</dt>
        <dd>
          {humanSize(d.size)} ({d.size.toLocaleString('en-US')} bytes)
        </dd>
        <dt>Obsid</dt>
        <dd>
          {d.obsid !== null && props.onObservation ? (
            <button type="button" className="jp-HeraStage-link jp-HeraStage-obsidLink" onClick={() => props.onObservation!(d.obsid!)}>
              {d.obsid}
            </button>
          ) : (
            d.obsid ?? '—'
          )}
        </dd>
        <dt>Created</dt>
        <dd>{shortTime(d.create_time)} UTC</dd>
        {d.source && (
          <>
            <dt>Source</dt>
            <dd>{d.source}</dd>
          </>
        )}
        {Object.entries(d.checksums).map(([alg, digest]) => (
          <React.Fragment key={alg}>
            <dt>{alg}</dt>
            <dd>
              <span className="jp-HeraStage-mono">{digest}</span>{' '}
              <CopyButton text={digest} label={`Copy the ${alg} checksum`} />
            </dd>
          </React.Fragment>
        ))}
      </dl>
      <h4>Instances ({d.instances.length})</h4>
      <ul className="jp-HeraStage-instances">
        {d.instances.map(inst => (
          <li key={`${inst.store}:${inst.path}`}>
            <span className={`jp-HeraStage-badge jp-mod-${inst.available ? 'ok' : 'off'}`}>
              {inst.available ? 'available' : 'unavailable'}
            </span>{' '}
            {fixityBadge(inst) && (
              <>
                <span
                  className="jp-HeraStage-badge jp-mod-bad"
                  data-fixity={inst.fixity}
                  title={`The fixity check${inst.verified_at ? ` at ${shortTime(inst.verified_at)}` : ''} found this copy ${
                    inst.fixity === 'bad' ? 'changed: it does not match its checksum' : 'missing from its store'
                  }; it is never staged from`}
                >
                  {fixityBadge(inst)}
                </span>{' '}
              </>
            )}
            <strong>{inst.store}</strong>
            {inst.store_kind === 'cold' ? ' (cold)' : ''}:{' '}
            <span className="jp-HeraStage-mono" title={inst.full_path}>
              {inst.path}
            </span>{' '}
            <CopyButton text={inst.full_path} label={`Copy the full path on ${inst.store}`} />
          </li>
        ))}
      </ul>
      {metadata && (
        <>
          <h4>Metadata</h4>
          <pre className="jp-HeraStage-pre">{JSON.stringify(metadata, null, 2)}</pre>
        </>
      )}
      <h4>Events ({d.events.length})</h4>
      {d.events.length ? (
        <ul className="jp-HeraStage-events">
          {d.events.map((ev, i) => (
            <li key={i}>
              <span className="jp-HeraStage-mono">{shortTime(ev.time)}</span> {ev.type}
              {Object.keys(ev.payload).length ? (
                <span className="jp-HeraStage-muted"> {JSON.stringify(ev.payload)}</span>
              ) : null}
            </li>
          ))}
        </ul>
      ) : (
        <div className="jp-HeraStage-muted">No events.</div>
      )}
    </div>
  );
}
