import * as React from 'react';

/** Each line of the syntax: what to type, what it finds. */
const SYNTAX: ReadonlyArray<[string, string]> = [
  ['zen.2457644.*', 'names matching a pattern (* any text, ? one character)'],
  ['"a name with spaces"', 'quotes group a value; a bare word without * is an exact name'],
  ['obsid:1157725457', 'one observation (also A..B, obsid>N, obsid<N, obsid:null)'],
  ['session:2457644', 'a night’s session (also A..B, >, <)'],
  ['size>10k  size<1.5GiB', 'sizes in bytes or with units: k, M, G (×1000), KiB, MiB, GiB (×1024)'],
  ['type:uvh5  source:rtp', 'the file type or source (* allowed)'],
  ['jd:2457644.1..2457644.5', 'start time (Julian date); lst:1.5..3 for LST hours'],
  ['instances>1', 'files with more than one copy'],
  ['newer:7  older:30', 'ingested in the last 7 days / more than 30 days ago'],
  ['-type:uvc', 'leave out what matches'],
  ['A OR B', 'either (OR binds tighter than the space, which means AND)'],
  ['( … )', 'grouping, e.g. -(type:uv OR type:uvc)']
];

/** Whole queries to try: clicking one puts it in the box. */
const EXAMPLES: ReadonlyArray<string> = [
  'zen.2457644.*.xx.HH.uvh5',
  'session:2457645 size>20k',
  'obsid:1157725457..1157730000 -type:uv',
  'size>1.5GiB OR instances>1'
];

export interface IQueryHelpProps {
  /** Put an example into the query box. */
  onExample: (text: string) => void;
}

/** The one-line query syntax and a few examples, shown under the box by "?". */
export function QueryHelp(props: IQueryHelpProps): JSX.Element {
  return (
    <div id="jp-HeraStage-queryHelp" className="jp-HeraStage-queryHelp" role="note" aria-label="Query syntax">
      <dl className="jp-HeraStage-syntax">
        {SYNTAX.map(([code, meaning]) => (
          <React.Fragment key={code}>
            <dt>
              <code>{code}</code>
            </dt>
            <dd>{meaning}</dd>
          </React.Fragment>
        ))}
      </dl>
      <div className="jp-HeraStage-muted">
        Terms separated by spaces must all match. Observations and sessions take their own
        fields (<code>files&gt;2</code>, <code>duration&gt;0.01</code>). Examples:
      </div>
      <ul className="jp-HeraStage-examples">
        {EXAMPLES.map(example => (
          <li key={example}>
            <button type="button" className="jp-HeraStage-link jp-HeraStage-example" onClick={() => props.onExample(example)}>
              <code>{example}</code>
            </button>
          </li>
        ))}
      </ul>
    </div>
  );
}
