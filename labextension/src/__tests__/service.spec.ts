import { ApiError, ApiUrls, ArchiveClient, joinUrl, queryString } from '../service';

function reply(status: number, body: unknown, raw = false): Response {
  const text = raw ? String(body) : JSON.stringify(body);
  return {
    ok: status >= 200 && status < 300,
    status,
    text: async () => text,
    json: async () => JSON.parse(text)
  } as unknown as Response;
}

describe('URL building', () => {
  const urls = new ApiUrls('http://localhost:8888/user/ann/');

  it('joins with exactly one slash', () => {
    expect(joinUrl('http://h/base/', '/a/', 'b')).toBe('http://h/base/a/b');
    expect(joinUrl('http://h', '', 'x')).toBe('http://h/x');
  });

  it('puts every endpoint under hera-stage/api', () => {
    expect(urls.status()).toBe('http://localhost:8888/user/ann/hera-stage/api/status');
    expect(urls.search()).toBe('http://localhost:8888/user/ann/hera-stage/api/search');
    expect(urls.stage()).toBe('http://localhost:8888/user/ann/hera-stage/api/stage');
    expect(urls.jobs()).toBe('http://localhost:8888/user/ann/hera-stage/api/jobs');
    expect(urls.cancel(7)).toBe('http://localhost:8888/user/ann/hera-stage/api/jobs/7/cancel');
    expect(urls.retry(7)).toBe('http://localhost:8888/user/ann/hera-stage/api/jobs/7/retry');
  });

  it('encodes file names', () => {
    expect(urls.file('zen.2457644.1 0#?.uvh5')).toBe(
      'http://localhost:8888/user/ann/hera-stage/api/files/zen.2457644.1%200%23%3F.uvh5'
    );
    expect(urls.fileContent('a b')).toBe(
      'http://localhost:8888/user/ann/hera-stage/api/files/a%20b/content'
    );
  });

  it('passes the log offset as a whole non-negative number', () => {
    expect(urls.log(3, 1024)).toBe('http://localhost:8888/user/ann/hera-stage/api/jobs/3/log?offset=1024');
    expect(urls.log(3, -5)).toMatch(/log\?offset=0$/);
    expect(urls.log(3.9, 2.5)).toMatch(/jobs\/3\/log\?offset=2$/);
  });

  it('builds query strings from the defined values only', () => {
    expect(queryString({ a: 1, b: undefined, c: null, d: 'x y' })).toBe('?a=1&d=x%20y');
    expect(queryString({})).toBe('');
  });
});

describe('ArchiveClient', () => {
  it('POSTs searches as JSON', async () => {
    const calls: Array<[string, RequestInit]> = [];
    const client = new ArchiveClient('http://h/', async (url, init) => {
      calls.push([url, init]);
      return reply(200, { kind: 'files', results: [], next_cursor: null, total: 0, search: {} });
    });
    await client.search({ query: 'zen.*', kind: 'files', limit: 50, sort: '-size' });
    expect(calls[0][0]).toBe('http://h/hera-stage/api/search');
    expect(calls[0][1].method).toBe('POST');
    expect(JSON.parse(calls[0][1].body as string)).toEqual({
      query: 'zen.*',
      kind: 'files',
      limit: 50,
      sort: '-size'
    });
  });

  it('sends dry_run true for a preview and false to launch', async () => {
    const bodies: any[] = [];
    const client = new ArchiveClient('http://h', async (_url, init) => {
      bodies.push(JSON.parse(init.body as string));
      return reply(200, {});
    });
    await client.dryRun({ names: ['a'], destination: 'here' });
    await client.stage({ names: ['a'], destination: 'here', method: 'symlink' });
    expect(bodies[0]).toEqual({ names: ['a'], destination: 'here', dry_run: true });
    expect(bodies[1]).toEqual({ names: ['a'], destination: 'here', method: 'symlink', dry_run: false });
  });

  it("raises the server's own error message", async () => {
    const client = new ArchiveClient('http://h', async () =>
      reply(400, { error: 'SearchError', message: "unknown clause 'nme-matches'" })
    );
    await expect(client.search({ search: { 'nme-matches': 'x' } })).rejects.toMatchObject({
      message: "unknown clause 'nme-matches'",
      status: 400,
      missing: false,
      error: 'SearchError'
    });
  });

  it('says plainly when the server extension is missing (HTML 404)', async () => {
    const client = new ArchiveClient('http://h', async () => reply(404, '<html>404: Not Found</html>', true));
    const error: ApiError = await client.status().catch(e => e);
    expect(error).toBeInstanceOf(ApiError);
    expect(error.missing).toBe(true);
    expect(error.message).toMatch(/server extension is not installed or not enabled/);
  });

  it('treats a JSON 404 (unknown file) as a normal error', async () => {
    const client = new ArchiveClient('http://h', async () => reply(404, { message: 'no file named x' }));
    const error: ApiError = await client.file('x').catch(e => e);
    expect(error.missing).toBe(false);
    expect(error.message).toBe('no file named x');
  });

  it('reports an unreachable server as missing', async () => {
    const client = new ArchiveClient('http://h', async () => {
      throw new TypeError('Failed to fetch');
    });
    const error: ApiError = await client.jobs().catch(e => e);
    expect(error.missing).toBe(true);
    expect(error.status).toBe(0);
  });

  it('unwraps the jobs list', async () => {
    const client = new ArchiveClient('http://h', async () => reply(200, { jobs: [{ id: 1 }] }));
    expect(await client.jobs()).toEqual([{ id: 1 }]);
  });
});
