import * as React from 'react';

import { checkJson, SearchModel } from '../model';
import { ISearchRequest, SEARCH_KINDS, SearchKind } from '../service';
import { QueryHelp } from './QueryHelp';
import { useSignal } from './hooks';

export interface ISearchBoxProps {
  model: SearchModel;
  /** Ask the server whether a search (one-line query or JSON) is valid: null when it is, else its message. */
  validate: (request: Pick<ISearchRequest, 'query' | 'search'>, kind: SearchKind) => Promise<string | null>;
  inputRef?: React.RefObject<HTMLInputElement>;
}

type Validity = { state: 'idle' | 'checking' | 'ok' } | { state: 'error'; message: string };

/** Milliseconds after the last keystroke before the server checks the search. */
const CHECK_DELAY_MS = 400;

/**
 * The one-line query box and the JSON editor one click away, both checked by the server as
 * you type; the kind selector; "?" for the query syntax.
 */
export function SearchBox(props: ISearchBoxProps): JSX.Element {
  const { model } = props;
  useSignal(model.changed);
  const [validity, setValidity] = React.useState<Validity>({ state: 'idle' });
  const [help, setHelp] = React.useState(false);
  const form = React.useRef<HTMLFormElement>(null);
  const json = model.mode === 'json';

  // JSON syntax is checked here, the search language on the server (its own message), debounced.
  React.useEffect(() => {
    let request: Pick<ISearchRequest, 'query' | 'search'>;
    if (json) {
      const check = checkJson(model.jsonText);
      if (!check.ok) {
        setValidity({ state: 'error', message: check.message });
        return;
      }
      request = { search: check.value };
    } else {
      if (!model.text.trim()) {
        setValidity({ state: 'idle' });
        return;
      }
      request = { query: model.text };
    }
    setValidity({ state: 'checking' });
    let live = true;
    const handle = setTimeout(() => {
      // The panel and the main area share the search: only a box that shows asks the server.
      if (!form.current || form.current.offsetParent === null) {
        setValidity({ state: 'idle' });
        return;
      }
      props
        .validate(request, model.kind)
        .then(message => {
          if (live) {
            setValidity(message ? { state: 'error', message } : { state: 'ok' });
          }
        })
        .catch(() => undefined);
    }, CHECK_DELAY_MS);
    return () => {
      live = false;
      clearTimeout(handle);
    };
  }, [model.mode, model.text, model.jsonText, model.kind]);

  const run = () => void model.run();
  // One message at a time: the last search's error (it names the same problem the
  // validity line would) until the box is edited, then the validity line again.
  const searchError = model.error && !model.missing ? model.error : null;
  const shown: Validity = searchError ? { state: 'idle' } : validity;

  return (
    <form
      ref={form}
      className="jp-HeraStage-searchBox"
      role="search"
      aria-label="Search the archive"
      onSubmit={e => {
        e.preventDefault();
        run();
      }}
    >
      <div className="jp-HeraStage-row jp-HeraStage-queryRow">
        {!json && (
          <input
            ref={props.inputRef}
            type="search"
            className="jp-mod-styled jp-HeraStage-query"
            placeholder="zen.2457644.* size>10k"
            aria-label="Query (one line)"
            aria-invalid={shown.state === 'error'}
            aria-describedby="jp-HeraStage-validity"
            value={model.text}
            onChange={e => model.set({ text: e.target.value })}
          />
        )}
        {json && <span className="jp-HeraStage-grow">JSON search</span>}
        <button
          type="button"
          className={`jp-Button jp-mod-styled jp-HeraStage-iconButton jp-HeraStage-helpToggle${help ? ' jp-mod-active' : ''}`}
          aria-expanded={help}
          aria-controls="jp-HeraStage-queryHelp"
          aria-label="Query syntax and examples"
          title="Query syntax and examples"
          onClick={() => setHelp(!help)}
        >
          ?
        </button>
      </div>
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
        <button
          type="button"
          className={`jp-Button jp-mod-styled jp-HeraStage-toggleJson${json ? ' jp-mod-active' : ''}`}
          aria-pressed={json}
          aria-label="Edit the search as JSON"
          title={json ? 'Back to the one-line query' : 'Edit this search as JSON'}
          onClick={() => (json ? model.set({ mode: 'text' }) : void model.openJson())}
        >
          {'{ }'}
        </button>
        <span className="jp-HeraStage-grow" />
        <button
          type="submit"
          className="jp-Button jp-mod-styled jp-mod-accept jp-HeraStage-searchButton"
          disabled={model.loading}
        >
          Search
        </button>
      </div>
      {help && (
        <QueryHelp
          onExample={text => {
            model.set({ mode: 'text', text });
            props.inputRef?.current?.focus();
          }}
        />
      )}
      {json && (
        <textarea
          className="jp-mod-styled jp-HeraStage-json"
          aria-label="JSON search"
          aria-invalid={shown.state === 'error'}
          aria-describedby="jp-HeraStage-validity"
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
      )}
      <div id="jp-HeraStage-validity" className={`jp-HeraStage-validity jp-mod-${shown.state}`} aria-live="polite">
        {shown.state === 'error'
          ? shown.message
          : shown.state === 'ok'
            ? json
              ? '✓ valid search (Ctrl+Enter to run)'
              : '✓ valid query (Enter to run)'
            : shown.state === 'checking'
              ? 'checking…'
              : ''}
      </div>
      {searchError && (
        <div className="jp-HeraStage-error" role="alert">
          {searchError}
        </div>
      )}
    </form>
  );
}
