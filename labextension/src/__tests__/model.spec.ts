import {
  bytesMoved,
  checkJson,
  describeTarget,
  destinationOf,
  IJobProgressEvent,
  isJobProgressEvent,
  JOB_PROGRESS_SCHEMA_ID,
  jobProgress,
  JobsModel,
  LogTail,
  mergeJob,
  nextSort,
  reduceJobEvent,
  searchBody,
  SearchModel,
  sortDirection,
  StageModel,
  relativeToRoot,
  targetOfSearch,
  whereText
} from '../model';
import { ApiError, IFile, IJob, ISearchReply, ISearchRequest } from '../service';
import { aJob } from './fixtures';

function file(i: number): IFile {
  return {
    name: `zen.${String(i).padStart(5, '0')}.uvh5`,
    type: 'uvh5',
    size: 1000 + i,
    checksums: {},
    create_time: '2026-01-01T00:00:00Z',
    obsid: 1000 + i
  };
}

/** A fake server holding `n` files, paged by an opaque cursor. */
function fakeSearch(n: number, calls: ISearchRequest[] = []) {
  const all = Array.from({ length: n }, (_, i) => file(i));
  return async (request: ISearchRequest): Promise<ISearchReply> => {
    calls.push(request);
    if (request.query === 'bad') {
      throw new ApiError("unknown field 'bad'", 400);
    }
    const start = request.cursor ? Number(request.cursor) : 0;
    const limit = request.limit ?? 100;
    const rows = request.sort === '-size' ? all.slice().reverse() : all;
    const end = Math.min(n, start + limit);
    return {
      kind: request.kind ?? 'files',
      results: rows.slice(start, end),
      next_cursor: end < n ? String(end) : null,
      total: request.count ? n : null,
      search: {}
    };
  };
}

describe('sorting', () => {
  it('cycles ascending, descending, default', () => {
    expect(nextSort(null, 'size')).toBe('size');
    expect(nextSort('size', 'size')).toBe('-size');
    expect(nextSort('-size', 'size')).toBeNull();
    expect(nextSort('-size', 'name')).toBe('name');
  });

  it('reports aria-sort', () => {
    expect(sortDirection('size', 'size')).toBe('ascending');
    expect(sortDirection('-size', 'size')).toBe('descending');
    expect(sortDirection('name', 'size')).toBe('none');
    expect(sortDirection(null, 'size')).toBe('none');
  });
});

describe('search bodies', () => {
  it('sends the one-line text as query', () => {
    expect(searchBody('text', 'zen.*', 'files', null)).toEqual({ kind: 'files', query: 'zen.*' });
  });

  it('sends parsed JSON as search, with the sort', () => {
    expect(searchBody('json', '{"name-matches": "zen.%"}', 'files', '-size')).toEqual({
      kind: 'files',
      search: { 'name-matches': 'zen.%' },
      sort: '-size'
    });
  });

  it('sends unparseable JSON as text, for the server to explain', () => {
    expect(searchBody('json', '{"name-matches": ', 'files', null).search).toBe('{"name-matches": ');
  });

  it('checks JSON syntax locally', () => {
    expect(checkJson('{"a": 1}')).toEqual({ ok: true, value: { a: 1 } });
    const bad = checkJson('{"a": }');
    expect(bad.ok).toBe(false);
    expect(!bad.ok && bad.message).toMatch(/^Not valid JSON/);
    expect(checkJson('  ').ok).toBe(false);
  });
});

describe('SearchModel pagination', () => {
  it('loads the first page with a count, then follows the cursor', async () => {
    const calls: ISearchRequest[] = [];
    const model = new SearchModel(fakeSearch(450, calls), 200);
    model.set({ text: 'zen.*' });
    await model.run();
    expect(model.rows).toHaveLength(200);
    expect(model.total).toBe(450);
    expect(model.hasMore).toBe(true);
    expect(calls[0]).toEqual({ kind: 'files', query: 'zen.*', limit: 200, count: true });

    await model.loadMore();
    await model.loadMore();
    expect(model.rows).toHaveLength(450);
    expect(model.hasMore).toBe(false);
    expect(calls[1]).toEqual({ kind: 'files', query: 'zen.*', limit: 200, cursor: '200' });
    expect(calls[1].count).toBeUndefined();

    await model.loadMore(); // at the end: no request
    expect(calls).toHaveLength(3);
  });

  it('keeps 10,000+ rows in order across pages', async () => {
    const model = new SearchModel(fakeSearch(12345), 1000);
    await model.run();
    while (model.hasMore) {
      await model.loadMore();
    }
    expect(model.rows).toHaveLength(12345);
    expect((model.rows[12344] as IFile).name).toBe('zen.12344.uvh5');
    expect(new Set(model.rows.map(r => model.key(r))).size).toBe(12345);
  });

  it('sorts on the server and starts again from page one', async () => {
    const calls: ISearchRequest[] = [];
    const model = new SearchModel(fakeSearch(300, calls), 100);
    await model.run();
    await model.loadMore();
    await model.sortBy('size');
    await model.sortBy('size');
    expect(model.sort).toBe('-size');
    expect(calls[calls.length - 1]).toMatchObject({ sort: '-size', count: true });
    expect(calls[calls.length - 1].cursor).toBeUndefined();
    expect(model.rows).toHaveLength(100);
    expect((model.rows[0] as IFile).name).toBe('zen.00299.uvh5');
  });

  it('drops the answer of a superseded search', async () => {
    let release: () => void = () => undefined;
    const slow = fakeSearch(10);
    const model = new SearchModel(async request => {
      if (request.query === 'slow') {
        await new Promise<void>(r => (release = r));
      }
      return slow({ ...request, limit: request.query === 'slow' ? 10 : 3 });
    });
    model.set({ text: 'slow' });
    const first = model.run();
    model.set({ text: 'fast' });
    await model.run();
    release();
    await first;
    expect(model.rows).toHaveLength(3);
  });

  it("keeps the server's error message", async () => {
    const model = new SearchModel(fakeSearch(10));
    model.set({ text: 'bad' });
    await model.run();
    expect(model.error).toBe("unknown field 'bad'");
    expect(model.missing).toBe(false);
    expect(model.loading).toBe(false);
  });

  it('forgets the error once the search is edited (one message, about what is in the box)', async () => {
    const model = new SearchModel(fakeSearch(10));
    model.set({ text: 'bad' });
    await model.run();
    model.set({ text: 'bad', pageSize: 50 });
    expect(model.error).toBe("unknown field 'bad'");
    model.set({ text: 'bad2' });
    expect(model.error).toBeNull();
  });

  it('selects single rows, ranges and all loaded, in row order', async () => {
    const model = new SearchModel(fakeSearch(50), 20);
    await model.run();
    model.toggle('zen.00005.uvh5');
    model.selectRange(3, 1);
    expect(model.selectedNames()).toEqual([
      'zen.00001.uvh5',
      'zen.00002.uvh5',
      'zen.00003.uvh5',
      'zen.00005.uvh5'
    ]);
    model.toggle('zen.00002.uvh5');
    expect(model.selection.has('zen.00002.uvh5')).toBe(false);
    model.selectAllLoaded();
    expect(model.selection.size).toBe(20);
    model.clearSelection();
    expect(model.selectedNames()).toEqual([]);
  });

  it('clears the selection when a new search runs', async () => {
    const model = new SearchModel(fakeSearch(50), 20);
    await model.run();
    model.selectAllLoaded();
    await model.run();
    expect(model.selection.size).toBe(0);
  });
});

describe('stage helpers', () => {
  it('maps the file browser path to a destination', () => {
    expect(destinationOf('')).toBe('.');
    expect(destinationOf('/')).toBe('.');
    expect(destinationOf('data/staged/')).toBe('data/staged');
  });

  it('maps job destinations into the Jupyter root for the file browser', () => {
    expect(relativeToRoot('/srv/ann/work/staged', '/srv/ann/work')).toBe('staged');
    expect(relativeToRoot('/srv/ann/work/a/b/', '/srv/ann/work/')).toBe('a/b');
    expect(relativeToRoot('/srv/ann/work', '/srv/ann/work')).toBe('');
    expect(relativeToRoot('/srv/ann/workshop', '/srv/ann/work')).toBeNull();
    expect(relativeToRoot('/elsewhere', '')).toBeNull();
    expect(relativeToRoot('staged/', '/srv')).toBe('staged');
  });

  it('describes targets', () => {
    expect(describeTarget({ names: ['a'] })).toBe('a');
    expect(describeTarget({ names: ['a', 'b', 'c'] })).toBe('3 selected files');
    expect(describeTarget({ query: 'zen.*' })).toBe('all results of “zen.*”');
  });

  it('stages all results with the same search', () => {
    expect(targetOfSearch({ kind: 'files', query: 'zen.*' })).toEqual({ query: 'zen.*' });
    expect(targetOfSearch({ kind: 'files', search: { a: 1 } })).toEqual({ search: { a: 1 } });
  });

  it('previews with a dry run, then launches with the same target', async () => {
    const requests: any[] = [];
    const model = new StageModel({
      dryRun: async r => {
        requests.push({ ...r, dry: true });
        return { destination: 'x', method: 'copy', files: 3, bytes: 10, missing: [], free_bytes: 99, fits: true };
      },
      stage: async r => {
        requests.push(r);
        return aJob({ id: 5, state: 'queued', files_total: 3, files_done: 0, bytes_total: 10, bytes_done: 0 });
      }
    });
    const launched: IJob[] = [];
    model.launched.connect((_, job) => launched.push(job));
    model.set({ destination: 'x' });
    await model.previewTarget({ names: ['a', 'b', 'c'] });
    expect(model.preview?.files).toBe(3);
    const job = await model.confirm();
    expect(job?.id).toBe(5);
    expect(launched).toHaveLength(1);
    expect(requests[1]).toEqual({ names: ['a', 'b', 'c'], destination: 'x', method: 'copy', force: false });
    expect(model.preview).toBeNull();
  });

  it('shows the refusal and drops the preview when the form changes', async () => {
    const model = new StageModel({
      dryRun: async () => {
        throw new ApiError("'/etc' is outside your root directory", 400);
      },
      stage: async () => {
        throw new Error('not reached');
      }
    });
    await model.previewTarget({ names: ['a'] });
    expect(model.error).toBe("'/etc' is outside your root directory");
    expect(model.target).toBeNull();
  });
});

function event(fields: Partial<IJobProgressEvent>): IJobProgressEvent {
  return {
    schema_id: JOB_PROGRESS_SCHEMA_ID,
    id: 1,
    state: 'running',
    files_total: 3,
    files_done: 0,
    bytes_total: 300,
    bytes_done: 0,
    ...fields
  };
}

describe('job progress reduction', () => {
  it('recognizes our events only', () => {
    expect(isJobProgressEvent(event({}))).toBe(true);
    expect(isJobProgressEvent({ schema_id: 'https://events.jupyter.org/other' })).toBe(false);
    expect(isJobProgressEvent({ schema_id: JOB_PROGRESS_SCHEMA_ID })).toBe(false);
  });

  it('creates a job from its first event and updates it', () => {
    let jobs = reduceJobEvent(new Map(), event({ destination: 'staged', bytes_done: 100, files_done: 1 }));
    expect(jobs.get(1)).toMatchObject({ id: 1, state: 'running', files_done: 1, destination: 'staged' });
    jobs = reduceJobEvent(jobs, event({ files_done: 3, bytes_done: 300, state: 'succeeded' }));
    expect(jobs.get(1)).toMatchObject({ state: 'succeeded', files_done: 3, destination: 'staged' });
  });

  it('does not let a stale reply move progress back', () => {
    const prev = mergeJob(undefined, { id: 1, state: 'running', files_done: 2, bytes_done: 200, files_total: 3, bytes_total: 300 });
    const stale = mergeJob(prev, { id: 1, state: 'running', files_done: 1, bytes_done: 100 });
    expect(stale.files_done).toBe(2);
    expect(stale.bytes_done).toBe(200);
  });

  it('keeps a finished job finished, unless it is queued again (retry)', () => {
    const done = mergeJob(undefined, { id: 1, state: 'cancelled', files_done: 1, files_total: 3, bytes_total: 3, bytes_done: 1 });
    expect(mergeJob(done, { id: 1, state: 'running', files_done: 1 }).state).toBe('cancelled');
    const retried = mergeJob(done, { id: 1, state: 'queued', files_done: 1 });
    expect(retried.state).toBe('queued');
  });

  it('computes fractions and the percent shown', () => {
    const base = aJob({ id: 1, state: 'running', files_total: 4, files_done: 1, bytes_total: 1000, bytes_done: 500 });
    expect(jobProgress(base)).toEqual({ files: 0.25, bytes: 0.5, percent: 50 });
    expect(jobProgress({ ...base, bytes_done: 1000 }).percent).toBe(99);
    expect(jobProgress({ ...base, bytes_done: 250, bytes_moving: 250 }).percent).toBe(50);
    expect(bytesMoved({ ...base, bytes_done: 900, bytes_moving: 500 })).toBe(1000);
    expect(jobProgress({ ...base, state: 'succeeded', bytes_done: 1000, files_done: 4 }).percent).toBe(100);
    expect(jobProgress({ ...base, bytes_total: 0, files_done: 2 }).percent).toBe(50);
    expect(jobProgress({ ...base, files_total: 0, bytes_total: 0, files_done: 0, state: 'succeeded' }).percent).toBe(100);
  });
});

describe('JobsModel', () => {
  function fakeClient(list: IJob[]) {
    return {
      jobs: async () => list.map(j => ({ ...j })),
      job: async (id: number) => ({ ...list.find(j => j.id === id)! }),
      cancel: async (id: number) => ({ ...list.find(j => j.id === id)!, state: 'cancelled' as const }),
      retry: async (id: number) => ({ ...list.find(j => j.id === id)!, state: 'queued' as const }),
      forget: async (id: number) => {
        list.splice(list.findIndex(j => j.id === id), 1);
      }
    };
  }
  const running = aJob({ id: 2, state: 'running', destination: 'd', files_total: 3, files_done: 0, bytes_total: 30, bytes_done: 0 });

  it('announces a job that ends while watched, once', async () => {
    const model = new JobsModel(fakeClient([running]), { autoPoll: false });
    const ended: IJob[] = [];
    model.jobEnded.connect((_, job) => ended.push(job));
    await model.refresh();
    model.handleEvent(event({ id: 2, files_done: 2, bytes_done: 20 }));
    expect(model.get(2)?.files_done).toBe(2);
    model.handleEvent(event({ id: 2, files_done: 3, bytes_done: 30, state: 'succeeded' }));
    model.handleEvent(event({ id: 2, files_done: 3, bytes_done: 30, state: 'succeeded' }));
    expect(ended.map(j => j.state)).toEqual(['succeeded']);
    model.dispose();
  });

  it('reads the whole record of a job that ends (its marker and error)', async () => {
    const list = [running];
    const model = new JobsModel(fakeClient(list), { autoPoll: false });
    await model.refresh();
    list[0] = { ...running, state: 'succeeded', files_done: 3, bytes_done: 30, marker: 'STAGING-SUCCEEDED' };
    model.handleEvent(event({ id: 2, files_done: 3, bytes_done: 30, state: 'succeeded' }));
    await new Promise(r => setTimeout(r, 0));
    expect(model.get(2)?.marker).toBe('STAGING-SUCCEEDED');
    // A poll answered before the job ended does not bring the in-progress marker back.
    const stale = mergeJob(model.get(2), { ...running, marker: 'STAGING-IN-PROGRESS' });
    expect(stale.marker).toBe('STAGING-SUCCEEDED');
    model.dispose();
  });

  it('does not announce jobs that were already finished when listed', async () => {
    const model = new JobsModel(fakeClient([{ ...running, state: 'failed' }]), { autoPoll: false });
    const ended: IJob[] = [];
    model.jobEnded.connect((_, job) => ended.push(job));
    await model.refresh();
    expect(ended).toEqual([]);
    expect(model.hasActive).toBe(false);
    model.dispose();
  });

  it('ignores other schemas and fetches jobs it did not know', async () => {
    const model = new JobsModel(fakeClient([running]), { autoPoll: false });
    model.handleEvent({ schema_id: 'other', id: 2 } as any);
    expect(model.jobs).toHaveLength(0);
    model.handleEvent(event({ id: 2, files_done: 1, bytes_done: 10 }));
    expect(model.get(2)?.files_done).toBe(1);
    await new Promise(r => setTimeout(r, 0));
    expect(model.get(2)?.destination).toBe('d');
    model.dispose();
  });

  it('cancels and lists newest first', async () => {
    const model = new JobsModel(fakeClient([running, { ...running, id: 5 }]), { autoPoll: false });
    await model.refresh();
    expect(model.jobs.map(j => j.id)).toEqual([5, 2]);
    await model.cancel(2);
    expect(model.get(2)?.state).toBe('cancelled');
    model.dispose();
  });

  it('reports a missing server extension', async () => {
    const model = new JobsModel(
      { ...fakeClient([]), jobs: async () => { throw new ApiError('missing', 404, true); } },
      { autoPoll: false }
    );
    await expect(model.refresh()).rejects.toBeInstanceOf(ApiError);
    expect(model.missing).toBe(true);
    model.dispose();
  });
});

describe('LogTail', () => {
  it('reads from the last offset and keeps the tail bounded', async () => {
    const offsets: number[] = [];
    const chunks = ['line 1\n', 'line 2\n', ''];
    let total = 0;
    const tail = new LogTail(
      {
        log: async (_id, offset = 0) => {
          offsets.push(offset);
          const text = chunks.shift() ?? '';
          total += text.length;
          return { text, next_offset: total };
        }
      },
      1,
      10
    );
    expect(await tail.fetch()).toBe(true);
    expect(await tail.fetch()).toBe(true);
    expect(await tail.fetch()).toBe(false);
    expect(offsets).toEqual([0, 7, 14]);
    expect(tail.text).toBe('line 2\n');
  });
});

describe('whereText', () => {
  it('lists stores once and marks unavailable ones', () => {
    const f: IFile = {
      ...file(1),
      instances: [
        { file: 'a', store: 'onsite', path: 'p', full_path: '/p', available: true, deletion_policy: 'allowed' },
        { file: 'a', store: 'onsite', path: 'q', full_path: '/q', available: true, deletion_policy: 'allowed' },
        { file: 'a', store: 'tape', path: 'p', full_path: '/p', available: false, deletion_policy: 'allowed' }
      ]
    };
    expect(whereText(f)).toBe('onsite, tape (offline)');
    expect(whereText(file(2))).toBe('—');
    const bad: IFile = {
      ...file(3),
      instances: [
        { file: 'a', store: 'onsite', path: 'p', full_path: '/p', available: false, deletion_policy: 'allowed', fixity: 'bad' },
        { file: 'a', store: 'offsite', path: 'p', full_path: '/p', available: true, deletion_policy: 'allowed', fixity: 'missing' }
      ]
    };
    expect(whereText(bad)).toBe('no good copy: onsite (bad copy), offsite (missing)');
  });
});
