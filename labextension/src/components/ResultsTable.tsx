import * as React from 'react';

import { count, humanSize, shortTime } from '../format';
import { describeSearch, SearchModel, sortDirection, whereText } from '../model';
import { IFile, IObservation, ISession, SearchKind, SearchRow } from '../service';
import { useSignal } from './hooks';

/** Fixed row height: rows are positioned, not measured, so 10,000+ rows stay cheap. */
export const ROW_HEIGHT = 26;
/** Rows rendered above and below the visible window. */
const OVERSCAN = 12;

interface IColumn {
  id: string;
  label: string;
  /** The server's sort key, when the column sorts. */
  sort?: string;
  /** Narrowest width (px) and share of the width left over (fr). */
  min: number;
  fr: number;
  numeric?: boolean;
  /** Shown in the side panel (the main area shows every column). */
  compact?: boolean;
  cell: (row: SearchRow) => string;
}

/** Width of the selection checkbox column. */
const CHECK_WIDTH = 26;

const COLUMNS: Record<SearchKind, IColumn[]> = {
  files: [
    { id: 'name', label: 'Name', sort: 'name', min: 200, fr: 3, compact: true, cell: r => (r as IFile).name },
    { id: 'obsid', label: 'Obsid', sort: 'obsid', min: 96, fr: 0.8, numeric: true, cell: r => String((r as IFile).obsid ?? '—') },
    { id: 'size', label: 'Size', sort: 'size', min: 66, fr: 0.8, numeric: true, compact: true, cell: r => humanSize((r as IFile).size) },
    { id: 'where', label: 'Where', min: 90, fr: 1.2, cell: r => whereText(r as IFile) },
    { id: 'created', label: 'Created (UTC)', sort: 'create_time', min: 130, fr: 1.2, cell: r => shortTime((r as IFile).create_time) }
  ],
  observations: [
    { id: 'obsid', label: 'Obsid', sort: 'obsid', min: 100, fr: 1, numeric: true, compact: true, cell: r => String((r as IObservation).obsid) },
    { id: 'session', label: 'Session', sort: 'session_id', min: 72, fr: 1, numeric: true, cell: r => String((r as IObservation).session_id ?? '—') },
    { id: 'start', label: 'Start JD', sort: 'start_time_jd', min: 116, fr: 1.2, numeric: true, compact: true, cell: r => (r as IObservation).start_time_jd.toFixed(5) },
    { id: 'lst', label: 'LST (h)', sort: 'start_lst_hr', min: 64, fr: 1, numeric: true, cell: r => (r as IObservation).start_lst_hr.toFixed(3) }
  ],
  sessions: [
    { id: 'id', label: 'Session', sort: 'id', min: 80, fr: 1, numeric: true, compact: true, cell: r => String((r as ISession).id) },
    { id: 'start', label: 'Start JD', sort: 'start_time_jd', min: 116, fr: 1, numeric: true, compact: true, cell: r => (r as ISession).start_time_jd.toFixed(5) },
    { id: 'stop', label: 'Stop JD', sort: 'stop_time_jd', min: 116, fr: 1, numeric: true, cell: r => (r as ISession).stop_time_jd.toFixed(5) }
  ]
};

/** The columns shown: every one in the main area, the compact ones in the side panel. */
export function visibleColumns(kind: SearchKind, compact: boolean): IColumn[] {
  return COLUMNS[kind].filter(c => !compact || c.compact);
}

/**
 * The grid's column template and the narrowest width it fits in: narrower than that,
 * the table scrolls sideways inside itself, never the whole panel. Compact (the side
 * panel): the first column takes what is left, so the table never scrolls sideways.
 */
export function gridLayout(kind: SearchKind, compact = false): { template: string; minWidth: number } {
  const columns = visibleColumns(kind, compact);
  const check = kind === 'files' ? [`${CHECK_WIDTH}px`] : [];
  if (compact) {
    return {
      template: check
        .concat(columns.map((c, i) => (i === 0 ? 'minmax(0, 1fr)' : `${Math.min(c.min, c.numeric ? 70 : 96)}px`)))
        .join(' '),
      minWidth: 0
    };
  }
  return {
    template: check.concat(columns.map(c => `minmax(${c.min}px, ${c.fr}fr)`)).join(' '),
    minWidth: (check.length ? CHECK_WIDTH : 0) + columns.reduce((sum, c) => sum + c.min, 0)
  };
}

/**
 * A file name split so that its extension stays visible when the cell is narrow: the head
 * is cut with an ellipsis, the tail (from the last dot, at most 8 characters) always shows.
 */
export function splitName(name: string): [string, string] {
  const dot = name.lastIndexOf('.');
  const cut = dot > 0 && name.length - dot <= 8 ? dot : name.length - Math.min(6, name.length);
  return [name.slice(0, cut), name.slice(cut)];
}

/** A cell's classes: numbers right-aligned. */
function cellClass(column: IColumn): string {
  return 'jp-HeraStage-cell' + (column.numeric ? ' jp-mod-numeric' : '');
}

export interface IResultsTableProps {
  model: SearchModel;
  /** The side panel's narrow table (the main area shows every column). */
  compact?: boolean;
  /** Open a row (its page in the main area); without it a click shows the panel's detail. */
  onOpen?: (kind: SearchKind, key: string) => void;
}

/** The results grid: virtualized, paged from the server's cursor as it scrolls. */
export function ResultsTable(props: IResultsTableProps): JSX.Element | null {
  const { model } = props;
  useSignal(model.changed);
  const scroller = React.useRef<HTMLDivElement>(null);
  const headerClip = React.useRef<HTMLDivElement>(null);
  const [scrollTop, setScrollTop] = React.useState(0);
  const [viewport, setViewport] = React.useState(300);
  const [active, setActive] = React.useState(0);
  const anchor = React.useRef<number | null>(null);

  const kind = model.rowsKind;
  const compact = props.compact ?? false;
  const columns = visibleColumns(kind, compact);
  const selectable = kind === 'files';
  const { template, minWidth } = gridLayout(kind, compact);
  const stale = model.stale;
  const open = (key: string) => (props.onOpen ? props.onOpen(kind, key) : model.showDetail(key));
  const rows = model.rows;

  React.useEffect(() => {
    const node = scroller.current;
    if (!node) {
      return;
    }
    const observer = new ResizeObserver(() => setViewport(node.clientHeight || 300));
    observer.observe(node);
    setViewport(node.clientHeight || 300);
    return () => observer.disconnect();
  }, [model.searched]);

  // Reset the window when a new search replaces the rows.
  const firstKey = rows.length ? model.key(rows[0]) : '';
  React.useEffect(() => {
    setActive(0);
    anchor.current = null;
    if (scroller.current) {
      scroller.current.scrollTop = 0;
      scroller.current.scrollLeft = 0;
    }
    setScrollTop(0);
  }, [firstKey, kind, model.sort]);

  // Fetch the next page when the window nears the end of what is loaded.
  const last = Math.ceil((scrollTop + viewport) / ROW_HEIGHT);
  React.useEffect(() => {
    if (model.hasMore && !model.loading && last + OVERSCAN * 4 >= rows.length) {
      void model.loadMore();
    }
  }, [last, rows.length, model.hasMore, model.loading]);

  if (!model.searched) {
    return null;
  }

  const first = Math.max(0, Math.floor(scrollTop / ROW_HEIGHT) - OVERSCAN);
  const end = Math.min(rows.length, last + OVERSCAN);
  const selectedCount = model.selection.size;

  const focusRow = (index: number) => {
    const i = Math.max(0, Math.min(rows.length - 1, index));
    setActive(i);
    const node = scroller.current;
    if (node) {
      const top = i * ROW_HEIGHT;
      if (top < node.scrollTop) {
        node.scrollTop = top;
      } else if (top + ROW_HEIGHT > node.scrollTop + node.clientHeight) {
        node.scrollTop = top + ROW_HEIGHT - node.clientHeight;
      }
    }
  };

  const onClickRow = (e: React.MouseEvent, index: number, key: string) => {
    setActive(index);
    if (selectable && e.shiftKey && anchor.current !== null) {
      model.selectRange(anchor.current, index);
      return;
    }
    if (selectable && (e.ctrlKey || e.metaKey)) {
      model.toggle(key);
      anchor.current = index;
      return;
    }
    anchor.current = index;
    open(key);
  };

  const onKeyDown = (e: React.KeyboardEvent) => {
    if (!rows.length) {
      return;
    }
    const page = Math.max(1, Math.floor(viewport / ROW_HEIGHT) - 1);
    const key = model.key(rows[Math.min(active, rows.length - 1)]);
    switch (e.key) {
      case 'ArrowDown':
        focusRow(active + 1);
        break;
      case 'ArrowUp':
        focusRow(active - 1);
        break;
      case 'PageDown':
        focusRow(active + page);
        break;
      case 'PageUp':
        focusRow(active - page);
        break;
      case 'Home':
        focusRow(0);
        break;
      case 'End':
        focusRow(rows.length - 1);
        break;
      case ' ':
        if (selectable) {
          model.toggle(key);
        }
        break;
      case 'Enter':
        open(key);
        break;
      case 'a':
        if ((e.ctrlKey || e.metaKey) && selectable) {
          model.selectAllLoaded();
          break;
        }
        return;
      case 'Escape':
        model.clearSelection();
        break;
      default:
        return;
    }
    e.preventDefault();
    e.stopPropagation();
  };

  const shown = rows.length;
  const summary =
    model.total === null
      ? `${count(shown)} ${kind}${model.hasMore ? '+' : ''}`
      : `${count(shown)} of ${count(model.total)} ${kind} loaded`;

  return (
    <div className={'jp-HeraStage-results' + (stale ? ' jp-mod-stale' : '')}>
      {stale && (
        <div className="jp-HeraStage-stale" role="status">
          {model.failed
            ? 'The last search failed: these rows are from the search before it and cannot be staged.'
            : 'These rows are from an earlier search, not the one in the box: press Enter (Search) to run it before staging.'}
        </div>
      )}
      <div className="jp-HeraStage-resultsBar" aria-live="polite">
        <span className="jp-HeraStage-summary" title={model.lastBody ? `Results of: ${describeSearch(model.lastBody) || '(everything)'}` : undefined}>
          {summary}
          {selectable && selectedCount ? ` · ${count(selectedCount)} selected` : ''}
          {model.loading ? ' · loading…' : ''}
        </span>
        {selectable && (
          <span className="jp-HeraStage-resultsActions">
            <button
              type="button"
              className="jp-HeraStage-link"
              onClick={() => model.selectAllLoaded()}
              disabled={!rows.length}
            >
              Select all loaded
            </button>
            <button
              type="button"
              className="jp-HeraStage-link"
              onClick={() => model.clearSelection()}
              disabled={!selectedCount}
            >
              Clear
            </button>
          </span>
        )}
      </div>
      <div
        className="jp-HeraStage-grid"
        role="grid"
        aria-label={`Search results (${kind})`}
        aria-rowcount={(model.total ?? rows.length) + 1}
        aria-multiselectable={selectable}
        aria-activedescendant={rows.length ? `jp-HeraStage-row-${active}` : undefined}
        tabIndex={0}
        onKeyDown={onKeyDown}
      >
        <div
          ref={headerClip}
          className="jp-HeraStage-gridHeaderClip"
          onScroll={() => {
            // Tabbing onto a header scrolls the header into view: the rows follow it.
            const clip = headerClip.current;
            if (clip && scroller.current && scroller.current.scrollLeft !== clip.scrollLeft) {
              scroller.current.scrollLeft = clip.scrollLeft;
            }
          }}
        >
          <div
            className="jp-HeraStage-gridHeader"
            role="row"
            aria-rowindex={1}
            style={{ gridTemplateColumns: template, minWidth }}
          >
            {selectable && (
              <div role="columnheader" className="jp-HeraStage-cell">
                <span className="jp-HeraStage-visuallyHidden">Selected</span>
              </div>
            )}
            {columns.map(c => (
              <div
                key={c.id}
                role="columnheader"
                aria-sort={c.sort ? sortDirection(model.sort, c.sort) : undefined}
                className={cellClass(c)}
              >
                {c.sort ? (
                  <button
                    type="button"
                    className="jp-HeraStage-sort"
                    title={`Sort by ${c.label.toLowerCase()}`}
                    onClick={() => void model.sortBy(c.sort!)}
                  >
                    {c.label}
                    <span aria-hidden="true" className="jp-HeraStage-sortMark">
                      {sortDirection(model.sort, c.sort) === 'ascending'
                        ? ' ▲'
                        : sortDirection(model.sort, c.sort) === 'descending'
                          ? ' ▼'
                          : ''}
                    </span>
                  </button>
                ) : (
                  c.label
                )}
              </div>
            ))}
          </div>
        </div>
        <div
          ref={scroller}
          className="jp-HeraStage-gridBody"
          onScroll={e => {
            const node = e.target as HTMLDivElement;
            // The header scrolls sideways with the rows (it sits outside their scroller).
            if (headerClip.current) {
              headerClip.current.scrollLeft = node.scrollLeft;
            }
            setScrollTop(node.scrollTop);
          }}
        >
          {!rows.length && !model.loading && (
            <div className="jp-HeraStage-empty">No {kind} match this search.</div>
          )}
          <div style={{ height: rows.length * ROW_HEIGHT, minWidth, position: 'relative' }}>
            {rows.slice(first, end).map((row, offset) => {
              const index = first + offset;
              const key = model.key(row);
              const selected = selectable && model.selection.has(key);
              return (
                <div
                  key={key}
                  id={`jp-HeraStage-row-${index}`}
                  role="row"
                  aria-rowindex={index + 2}
                  aria-selected={selectable ? selected : undefined}
                  data-key={key}
                  className={
                    'jp-HeraStage-gridRow' +
                    (selected ? ' jp-mod-selected' : '') +
                    (index === active ? ' jp-mod-active' : '') +
                    (model.detailKey === key ? ' jp-mod-detail' : '')
                  }
                  style={{
                    gridTemplateColumns: template,
                    transform: `translateY(${index * ROW_HEIGHT}px)`,
                    height: ROW_HEIGHT
                  }}
                  onClick={e => onClickRow(e, index, key)}
                >
                  {selectable && (
                    <div role="gridcell" className="jp-HeraStage-cell">
                      <input
                        type="checkbox"
                        tabIndex={-1}
                        aria-label={`Select ${key}`}
                        checked={selected}
                        onClick={e => e.stopPropagation()}
                        onChange={e => {
                          anchor.current = index;
                          model.toggle(key, e.target.checked);
                        }}
                      />
                    </div>
                  )}
                  {columns.map(c => {
                    const text = c.cell(row);
                    if (c.id === 'name') {
                      const [head, tail] = splitName(text);
                      return (
                        <div key={c.id} role="gridcell" className={cellClass(c) + ' jp-HeraStage-nameCell'} title={text}>
                          <span
                            className="jp-HeraStage-nameHead"
                            style={{ maxWidth: `calc(100% - ${tail.length + 1}ch)` }}
                          >
                            {head}
                          </span>
                          <span className="jp-HeraStage-nameTail">{tail}</span>
                        </div>
                      );
                    }
                    return (
                      <div key={c.id} role="gridcell" className={cellClass(c)} title={text}>
                        {text}
                      </div>
                    );
                  })}
                </div>
              );
            })}
          </div>
        </div>
      </div>
    </div>
  );
}
