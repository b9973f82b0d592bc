import { ApiError, ArchiveClient, ICleanReport, ICleanRequest, IStagedFolder, IStagedView } from '../service';
import { expiryText, hasExpired, ICleanPlan, keptLines, outcomeOf, planOf, StagedModel, stateText } from '../staged';

function reply(status: number, body: unknown): Response {
  const text = JSON.stringify(body);
  return {
    ok: status >= 200 && status < 300,
    status,
    text: async () => text,
    json: async () => JSON.parse(text)
  } as unknown as Response;
}

/** A folder as GET staged gives it (the shape of jobs/cleaner.py's examine). */
function folder(over: Partial<IStagedFolder> = {}): IStagedFolder {
  return {
    destination: '/home/ann/old/night',
    jobs: [1],
    files: 2,
    bytes: 36906,
    expires_at: '2026-12-06T07:05:31Z',
    expired: true,
    created_at: '2026-12-06T07:05:30.911482Z',
    finished_at: '2026-12-06T07:05:47.496750Z',
    made: true,
    state: 'intact',
    present_files: 2,
    present_bytes: 36906,
    missing: [],
    missing_count: 0,
    changed: [],
    changed_count: 0,
    foreign: [],
    foreign_count: 0,
    verified: false,
    ...over
  };
}

function view(folders: IStagedFolder[]): IStagedView {
  return {
    folders,
    total_bytes: folders.reduce((s, f) => s + f.bytes, 0),
    expired_bytes: 0,
    by_root: {},
    unexpired_bytes: 0,
    quota_bytes: null
  };
}

describe('staged service calls', () => {
  it('GETs staged and POSTs staged/clean with the body as given', async () => {
    const calls: Array<[string, RequestInit]> = [];
    const client = new ArchiveClient('http://h/user/ann/', async (url, init) => {
      calls.push([url, init]);
      return reply(200, url.endsWith('/clean') ? { dry_run: true, folders: [] } : view([]));
    });
    await client.staged();
    await client.cleanStaged({ folders: ['/home/ann/old'], dry_run: true });
    expect(calls[0][0]).toBe('http://h/user/ann/hera-stage/api/staged');
    expect(calls[0][1].method).toBe('GET');
    expect(calls[1][0]).toBe('http://h/user/ann/hera-stage/api/staged/clean');
    expect(calls[1][1].method).toBe('POST');
    expect(JSON.parse(calls[1][1].body as string)).toEqual({ folders: ['/home/ann/old'], dry_run: true });
  });

  it("raises the server's message for a folder that is not a staged one", async () => {
    const client = new ArchiveClient('http://h', async () =>
      reply(404, { error: 'NotFound', message: "'x' is not one of your staged folders" })
    );
    await expect(client.cleanStaged({ folders: ['x'] })).rejects.toMatchObject({
      message: "'x' is not one of your staged folders",
      status: 404,
      missing: false
    });
  });
});

describe('staged folders in words', () => {
  const before = Date.parse('2026-12-06T07:00:00Z');
  const after = Date.parse('2026-12-06T08:00:00Z');

  it('says the expiry', () => {
    expect(expiryText(folder(), before)).toBe('expired 2026-12-06 07:05 UTC');
    expect(expiryText(folder({ expired: false }), before)).toBe('expires 2026-12-06 07:05 UTC');
    expect(expiryText(folder({ expires_at: null, expired: false }), after)).toBe('no expiry');
  });

  it('counts a folder as expired once its time has passed, even if read before', () => {
    expect(hasExpired(folder({ expired: false }), before)).toBe(false);
    expect(hasExpired(folder({ expired: false }), after)).toBe(true);
    expect(hasExpired(folder({ expired: true }), before)).toBe(true); // the server's word
    // A job still stages into it: not expired (the server says so too).
    expect(hasExpired(folder({ expired: false, state: 'busy' }), after)).toBe(false);
    expect(hasExpired(folder({ expired: false, expires_at: null }), after)).toBe(false);
  });

  it('says what changed, and why a folder is left alone', () => {
    expect(stateText(folder())).toBe('intact');
    expect(stateText(folder({ state: 'changed', foreign_count: 1, changed_count: 2, missing_count: 1 }))).toBe(
      'changed: 1 item not staged, 2 changed, 1 missing'
    );
    expect(stateText(folder({ state: 'busy', reason: 'a job is still staging into it' }))).toBe(
      'busy: a job is still staging into it'
    );
  });

  it("lists what stays, in the server's words, and how many more", () => {
    const lines = keptLines({
      ...folder({ state: 'changed' }),
      changed: [{ path: 'a.uvh5', reason: '3 bytes now, 5 staged' }],
      changed_count: 1,
      foreign: ['notes.txt', 'mine/'],
      foreign_count: 60,
      missing_count: 1,
      errors: [{ path: 'b.uvh5', reason: 'Permission denied' }]
    });
    expect(lines).toEqual([
      'a.uvh5: 3 bytes now, 5 staged (kept)',
      'notes.txt: not staged (kept)',
      'mine/: not staged (kept)',
      '… and 58 more not staged',
      '1 staged entry missing already',
      'b.uvh5: Permission denied'
    ]);
  });

  it('plans from a dry run: what would go, and whether confirming does anything', () => {
    const report: ICleanReport = {
      dry_run: true,
      folders: [
        { ...folder(), would_remove_files: 2, would_remove_bytes: 36906 },
        { ...folder({ destination: '/home/ann/b', state: 'moved', reason: 'the path leads elsewhere now' }), would_remove_files: 0, would_remove_bytes: 0 }
      ],
      removed_files: 0,
      removed_bytes: 0,
      cleaned_jobs: []
    };
    const plan = planOf(report);
    expect(plan.files).toBe(2);
    expect(plan.bytes).toBe(36906);
    expect(plan.actionable).toBe(true);
    expect(plan.folders[1].kept).toEqual(['the path leads elsewhere now']);
    expect(planOf({ ...report, folders: [report.folders[1]] }).actionable).toBe(false);
    // A folder that is gone: confirming drops its record.
    const gone = { ...folder({ state: 'gone', reason: 'the folder is not there any more' }), would_remove_files: 0 };
    expect(planOf({ ...report, folders: [gone] }).actionable).toBe(true);
  });

  it('says what a clean did', () => {
    const outcome = outcomeOf(
      {
        dry_run: false,
        folders: [{ ...folder({ foreign: ['notes.txt'], foreign_count: 1, state: 'changed' }), removed_files: 2, removed_bytes: 36906, folder_removed: false, errors: [] }],
        removed_files: 2,
        removed_bytes: 36906,
        cleaned_jobs: [1]
      },
      p => p.replace('/home/ann/', '')
    );
    expect(outcome.message).toBe('Removed 2 files (36.0 KiB) from 1 folder.');
    expect(outcome.kept).toEqual(['old/night: notes.txt: not staged (kept)']);
  });
});

describe('StagedModel.clean', () => {
  function fake(cleanReply: (request: ICleanRequest) => ICleanReport | Error) {
    const requests: ICleanRequest[] = [];
    let listed = 0;
    const client = {
      staged: async () => {
        listed += 1;
        return view([folder()]);
      },
      cleanStaged: async (request: ICleanRequest) => {
        requests.push(request);
        const r = cleanReply(request);
        if (r instanceof Error) {
          throw r;
        }
        return r;
      }
    };
    return { model: new StagedModel(client), requests, listed: () => listed };
  }
  const dry: ICleanReport = {
    dry_run: true,
    folders: [{ ...folder(), would_remove_files: 2, would_remove_bytes: 36906 }],
    removed_files: 0,
    removed_bytes: 0,
    cleaned_jobs: []
  };
  const done: ICleanReport = {
    dry_run: false,
    folders: [{ ...folder(), removed_files: 2, removed_bytes: 36906, folder_removed: true, errors: [] }],
    removed_files: 2,
    removed_bytes: 36906,
    cleaned_jobs: [1]
  };

  it('does a dry run, asks, cleans, then lists again', async () => {
    const { model, requests, listed } = fake(r => (r.dry_run ? dry : done));
    let asked: ICleanPlan | null = null;
    const outcome = await model.clean({ expired: true }, async plan => {
      asked = plan;
      return true;
    });
    expect(requests).toEqual([
      { expired: true, dry_run: true },
      { expired: true, dry_run: false }
    ]);
    expect(asked!.files).toBe(2);
    expect(outcome.kind).toBe('cleaned');
    expect(outcome.message).toBe('Removed 2 files (36.0 KiB) from 1 folder; 1 folder removed.');
    expect(model.outcome).toBe(outcome);
    expect(listed()).toBe(1);
    expect(model.cleaning).toBe(false);
  });

  it('removes nothing when the user says no', async () => {
    const { model, requests } = fake(r => (r.dry_run ? dry : done));
    const outcome = await model.clean({ folders: ['/home/ann/old/night'] }, async () => false);
    expect(requests).toEqual([{ folders: ['/home/ann/old/night'], dry_run: true }]);
    expect(outcome.kind).toBe('cancelled');
  });

  it('does not ask when nothing has expired', async () => {
    const { model, requests } = fake(() => ({ ...dry, folders: [] }));
    const confirm = jest.fn(async () => true);
    const outcome = await model.clean({ expired: true }, confirm);
    expect(confirm).not.toHaveBeenCalled();
    expect(requests.length).toBe(1);
    expect(outcome.kind).toBe('nothing');
  });

  it("shows the server's refusal", async () => {
    const { model } = fake(() => new ApiError("'old' is not one of your staged folders", 404));
    const outcome = await model.clean({ folders: ['old'] }, async () => true);
    expect(outcome).toEqual({ kind: 'error', message: "'old' is not one of your staged folders", kept: [] });
    expect(model.outcome).toEqual(outcome);
  });

  it('keeps only the latest read', async () => {
    const slow: Array<(v: IStagedView) => void> = [];
    const model = new StagedModel({
      staged: () => new Promise<IStagedView>(resolve => slow.push(resolve)),
      cleanStaged: async () => dry
    });
    const first = model.refresh();
    const second = model.refresh();
    slow[1](view([folder({ destination: '/new' })]));
    await second;
    slow[0](view([folder({ destination: '/old' })]));
    await first;
    expect(model.view!.folders.map(f => f.destination)).toEqual(['/new']);
    expect(model.loading).toBe(false);
  });

  it("keeps the list's error until a load succeeds", async () => {
    let fail = true;
    const model = new StagedModel({
      staged: async () => {
        if (fail) {
          throw new ApiError('the catalogue is locked', 503);
        }
        return view([]);
      },
      cleanStaged: async () => dry
    });
    await model.refresh();
    expect(model.error).toBe('the catalogue is locked');
    fail = false;
    await model.refresh();
    expect(model.error).toBeNull();
    expect(model.view!.folders).toEqual([]);
  });
});
