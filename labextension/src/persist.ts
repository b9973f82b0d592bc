/**
 * What the panel keeps across a reload: the query (text or JSON), the kind, the sort, the
 * destination and the method, in the browser's local storage under a key per server.
 *
 * No JupyterLab imports: jest tests it with a plain object as the storage.
 */
import { SearchModel, sortFor } from './model';
import { SEARCH_KINDS, STAGE_METHODS, SearchKind, StageMethod } from './service';

export interface IPanelState {
  mode: 'text' | 'json';
  text: string;
  jsonText: string;
  kind: SearchKind;
  sort: string | null;
  destination: string;
  method: StageMethod;
}

/** The part of the Web Storage API used here. */
export type KeyValueStore = Pick<Storage, 'getItem' | 'setItem'>;

/** The storage key of the panel on the server at `baseUrl`. */
export function stateKey(baseUrl: string): string {
  return `hera-stage:panel-state:${baseUrl}`;
}

/** The state of the models now. */
export function panelState(
  search: Pick<SearchModel, 'mode' | 'text' | 'jsonText' | 'kind' | 'sort'>,
  stage: { destination: string; method: StageMethod }
): IPanelState {
  return {
    mode: search.mode,
    text: search.text,
    jsonText: search.jsonText,
    kind: search.kind,
    sort: search.sort,
    destination: stage.destination,
    method: stage.method
  };
}

/** The state saved, checked field by field (anything unexpected is left out); null: none. */
export function loadPanelState(storage: KeyValueStore, key: string): Partial<IPanelState> | null {
  let raw: unknown;
  try {
    raw = JSON.parse(storage.getItem(key) ?? 'null');
  } catch {
    return null;
  }
  if (!raw || typeof raw !== 'object') {
    return null;
  }
  const r = raw as Record<string, unknown>;
  const out: Partial<IPanelState> = {};
  if (r.mode === 'text' || r.mode === 'json') {
    out.mode = r.mode;
  }
  for (const field of ['text', 'jsonText', 'destination'] as const) {
    if (typeof r[field] === 'string') {
      out[field] = r[field] as string;
    }
  }
  if (SEARCH_KINDS.includes(r.kind as SearchKind)) {
    out.kind = r.kind as SearchKind;
  }
  if (typeof r.sort === 'string' || r.sort === null) {
    out.sort = sortFor(out.kind ?? 'files', r.sort as string | null);
  }
  if (STAGE_METHODS.includes(r.method as StageMethod)) {
    out.method = r.method as StageMethod;
  }
  return out;
}

export function savePanelState(storage: KeyValueStore, key: string, state: IPanelState): void {
  try {
    storage.setItem(key, JSON.stringify(state));
  } catch {
    // Storage full or disabled: the panel still works, it just forgets on reload.
  }
}
