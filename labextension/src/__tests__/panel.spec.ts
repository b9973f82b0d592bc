import {
  addSample,
  IByteSample,
  jobDuration,
  jobMatches,
  jobSpeed,
  sameSearch,
  SearchModel,
  sortFor,
  windowRate
} from '../model';
import { loadPanelState, panelState, savePanelState } from '../persist';
import { ISearchReply, ISearchRequest } from '../service';
import { aJob } from './fixtures';

const MiB = 1024 * 1024;

describe('rate from byte samples', () => {
  it('is the bytes moved over the window, not an average since the start', () => {
    let samples: IByteSample[] = [];
    // 30 s at 1 MiB/s, then 10 MiB/s.
    for (let t = 0; t <= 30; t++) {
      samples = addSample(samples, t * 1000, t * MiB);
    }
    for (let t = 31; t <= 45; t++) {
      samples = addSample(samples, t * 1000, 30 * MiB + (t - 30) * 10 * MiB);
    }
    expect(windowRate(samples, 45000)! / MiB).toBeCloseTo(10, 5);
    expect(samples.length).toBeLessThanOrEqual(12); // the window and one before it
  });

  it('falls while nothing moves, and is unknown at first', () => {
    let samples = addSample([], 0, 0);
    expect(windowRate(samples, 1000)).toBeNull();
    samples = addSample(samples, 1000, 40 * MiB); // a file of 40 MiB landed
    expect(windowRate(samples, 2000)! / MiB).toBe(20);
    samples = addSample(samples, 5000, 40 * MiB); // no change: no sample
    expect(samples.length).toBe(2);
    expect(windowRate(samples, 20000)).toBe(0);
  });

  it('restarts when bytes go back (a retry)', () => {
    let samples = addSample(addSample([], 0, 0), 3000, 30 * MiB);
    samples = addSample(samples, 4000, 1 * MiB);
    expect(samples).toEqual([{ t: 4000, bytes: MiB }]);
  });

  it('gives an ETA from the rate and the bytes left', () => {
    const job = aJob({ id: 1, state: 'running', files_total: 1, files_done: 0, bytes_total: 100 * MiB, bytes_done: 40 * MiB });
    const samples = [
      { t: 0, bytes: 20 * MiB },
      { t: 4000, bytes: 40 * MiB }
    ];
    const speed = jobSpeed(job, samples, 4000);
    expect(speed.rate! / MiB).toBe(5);
    expect(speed.eta).toBe(12);
    expect(jobSpeed({ ...job, state: 'succeeded' }, samples, 4000)).toEqual({ rate: null, eta: null });
  });
});

describe('jobs', () => {
  const base = aJob({ id: 1, state: 'running', files_total: 1, files_done: 0, bytes_total: 1, bytes_done: 0 });
  it('filters by state', () => {
    expect(jobMatches({ ...base, state: 'queued' }, 'running')).toBe(true);
    expect(jobMatches({ ...base, state: 'succeeded' }, 'finished')).toBe(true);
    expect(jobMatches({ ...base, state: 'cancelled' }, 'failed')).toBe(true);
    expect(jobMatches({ ...base, state: 'failed' }, 'finished')).toBe(false);
  });
  it('has a duration from start to end, or to now', () => {
    const started = { ...base, started_at: '2026-01-01T00:00:00Z' };
    expect(jobDuration(started, Date.parse('2026-01-01T00:01:30Z'))).toBe(90);
    expect(jobDuration({ ...started, finished_at: '2026-01-01T00:00:10Z' }, 0)).toBe(10);
    expect(jobDuration(base, 0)).toBeNull();
  });
});

describe('search staleness and sort', () => {
  const reply: ISearchReply = { kind: 'files', results: [{ name: 'a', type: 'uvh5', size: 1, checksums: {}, create_time: '', obsid: null }], next_cursor: null, total: 1, search: { 'name-is-exactly': 'a' } };

  it('drops a sort the new kind does not offer', () => {
    expect(sortFor('observations', '-size')).toBeNull();
    expect(sortFor('observations', '-obsid')).toBe('-obsid');
    const model = new SearchModel(async () => reply);
    model.sort = '-size';
    model.set({ kind: 'observations' });
    expect(model.sort).toBeNull();
    model.set({ kind: 'files' });
    expect(model.sort).toBe('-size'); // each kind keeps its own
  });

  it('marks rows stale when the box changes or a search fails, and stages none of them', async () => {
    let fail = false;
    const model = new SearchModel(async (r: ISearchRequest) => {
      if (fail) {
        throw new Error('bad query');
      }
      return { ...reply, kind: r.kind ?? 'files' };
    });
    model.set({ text: 'a' });
    await model.run();
    model.toggle('a');
    expect(model.stale).toBe(false);
    expect(model.selectedNames()).toEqual(['a']);
    expect(model.allResultsTarget()).toEqual({ query: 'a' });
    model.set({ text: 'b' });
    expect(model.stale).toBe(true);
    expect(model.selectedNames()).toEqual([]);
    expect(model.allResultsTarget()).toBeNull();
    model.set({ text: 'a' });
    expect(model.stale).toBe(false);
    fail = true;
    await model.run();
    expect(model.stale).toBe(true);
    expect(model.allResultsTarget()).toBeNull();
  });

  it('compares searches by what they ask', () => {
    expect(sameSearch({ kind: 'files', query: 'a' }, { kind: 'files', query: 'a', sort: null })).toBe(true);
    expect(sameSearch({ kind: 'files', search: { a: 1 } }, { kind: 'files', search: { a: 2 } })).toBe(false);
  });

  it('opens the JSON editor on the query in the box', async () => {
    const model = new SearchModel(async () => reply);
    model.set({ text: 'a' });
    await model.openJson();
    expect(model.mode).toBe('json');
    expect(JSON.parse(model.jsonText)).toEqual({ 'name-is-exactly': 'a' });
  });
});

describe('panel state', () => {
  it('round-trips and refuses what it does not know', () => {
    const store = new Map<string, string>();
    const storage = { getItem: (k: string) => store.get(k) ?? null, setItem: (k: string, v: string) => void store.set(k, v) };
    const state = panelState(
      { mode: 'text', text: 'zen.*', jsonText: '{}', kind: 'observations', sort: '-obsid' },
      { destination: 'here', method: 'symlink' }
    );
    savePanelState(storage, 'k', state);
    expect(loadPanelState(storage, 'k')).toEqual(state);
    store.set('k', JSON.stringify({ kind: 'planets', sort: '-size', method: 'teleport', text: 3 }));
    expect(loadPanelState(storage, 'k')).toEqual({ sort: '-size' }); // files: the kind it falls back to
    store.set('k', 'not json');
    expect(loadPanelState(storage, 'k')).toBeNull();
  });
});
