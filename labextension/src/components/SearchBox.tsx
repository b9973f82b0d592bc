import * as React from 'react';

import { checkJson, SearchModel } from '../model';
import { SEARCH_KINDS, SearchKind } from '../service';
import { useSignal } from './hooks';

export interface ISearchBoxProps {
  model: SearchModel;
  /** Ask the server whether a JSON search is valid: null when it is, else its message. */
  validate: (search: unknown, kind: SearchKind) => Promise<string | null>;
  inputRef?: React.RefObject<HTMLInputElement>;
}

type Validity = { state: 'idle' | 'checking' | 'ok' } | { state: 'error'; message: string };

/** The one-line query box, the JSON editor one click away, and the kind selector. */
export function SearchBox(props: ISearchBoxProps): JSX.Element {
  const { model } = props;
  useSignal(model.changed);
  const [validity, setValidity] = React.useState<Validity>({ state: 'idle' });

  // Validate the JSON editor as the user types: JSON syntax here, the search
  // language on the server (its own error message), debounced.
  React.useEffect(() => {
    if (model.mode !== 'json') {
      return;
    }
    const check = checkJson(model.jsonText);
    if (!check.ok) {
      setValidity({ state: 'error', message: check.message });
      return;
    }
    setValidity({ state: 'checking' });
    let live = true;
    const handle = setTimeout(() => {
      props
        .validate(check.value, model.kind)
        .then(message => {
          if (live) {
            setValidity(message ? { state: 'error', message } : { state: 'ok' });
          }
        })
        .catch(() => undefined);
    }, 400);
    return () => {
      live = false;
      clearTimeout(handle);
    };
  }, [model.mode, model.jsonText, model.kind]);

  const run = () => void model.run();
  const json = model.mode === 'json';
  // One message at a time: the last search's error (it names the same problem the
  // validity line would) until the box is edited, then the validity line again.
  const searchError = model.error && !model.missing ? model.error : null;
  const shown: Validity = searchError ? { state: 'idle' } : validity;

  return (
    <form
      className="jp-HeraStage-searchBox"
      role="search"
      aria-label="Search the archive"
      onSubmit={e => {
        e.preventDefault();
        run();
      }}
    >
      <div className="jp-HeraStage-row">
        <label className="jp-HeraStage-visuallyHidden" htmlFor="jp-HeraStage-kind">
          Kind
        </label>
        <select
          id="jp-HeraStage-kind"
          className="jp-mod-styled jp-HeraStage-kind"
          value={model.kind}
          aria-label="Kind of search"
          onChange={e => model.set({ kind: e.target.value as SearchKind })}
        >
          {SEARCH_KINDS.map(k => (
            <option key={k} value={k}>
              {k}
            </option>
          ))}
        </select>
        {!json && (
          <input
            ref={props.inputRef}
            type="search"
            className="jp-mod-styled jp-HeraStage-query"
            placeholder="zen.2457644.* size>10000"
            aria-label="Query (one line)"
            value={model.text}
            onChange={e => model.set({ text: e.target.value })}
          />
        )}
        {json && <span className="jp-HeraStage-grow">JSON search</span>}
        <button
          type="button"
          className={`jp-Button jp-mod-styled jp-HeraStage-toggleJson${json ? ' jp-mod-active' : ''}`}
          aria-pressed={json}
          aria-label="Edit the search as JSON"
          title={json ? 'Back to the one-line query' : 'Edit the search as JSON'}
          onClick={() => model.set({ mode: json ? 'text' : 'json' })}
        >
          {'{ }'}
        </button>
        <button
          type="submit"
          className="jp-Button jp-mod-styled jp-mod-accept jp-HeraStage-searchButton"
          disabled={model.loading}
        >
          Search
        </button>
      </div>
      {json && (
        <div className="jp-HeraStage-jsonEditor">
          <textarea
            className="jp-mod-styled jp-HeraStage-json"
            aria-label="JSON search"
            spellCheck={false}
            rows={5}
            value={model.jsonText}
            onChange={e => model.set({ jsonText: e.target.value })}
            onKeyDown={e => {
              if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
                e.preventDefault();
                run();
              }
            }}
          />
          <div
            className={`jp-HeraStage-validity jp-mod-${shown.state}`}
            aria-live="polite"
          >
            {shown.state === 'error'
              ? shown.message
              : shown.state === 'ok'
                ? '✓ valid search (Ctrl+Enter to run)'
                : shown.state === 'checking'
                  ? 'checking…'
                  : ''}
          </div>
        </div>
      )}
      {searchError && (
        <div className="jp-HeraStage-error" role="alert">
          {searchError}
        </div>
      )}
    </form>
  );
}
