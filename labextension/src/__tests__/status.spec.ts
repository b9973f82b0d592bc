import { statusText, statusTitle, StatusResult } from '../status';

const ok: StatusResult = {
  kind: 'ok',
  status: {
    version: '0.1.0',
    site_name: 'karoo',
    database: 'sqlite',
    counts: { files: 412, instances: 830, stores: 2 },
    allow_ingest: true
  }
};

describe('statusText', () => {
  it('shows the file count', () => {
    expect(statusText(ok)).toBe('Archive: 412 files');
  });

  it('uses the singular for one file and groups thousands', () => {
    const one: StatusResult = { kind: 'ok', status: { version: '0.1.0', counts: { files: 1 } } };
    const many: StatusResult = { kind: 'ok', status: { version: '0.1.0', counts: { files: 12345 } } };
    expect(statusText(one)).toBe('Archive: 1 file');
    expect(statusText(many)).toBe('Archive: 12,345 files');
  });

  it('reports a missing server extension', () => {
    expect(statusText({ kind: 'missing', message: '404' })).toBe(
      'Archive: server extension missing'
    );
  });

  it('reports server errors separately', () => {
    expect(statusText({ kind: 'error', httpStatus: 500, message: 'boom' })).toBe(
      'Archive: error (HTTP 500)'
    );
  });
});

describe('statusTitle', () => {
  it('summarises the status JSON', () => {
    expect(statusTitle(ok)).toBe(
      'HERA Stage 0.1.0 · site karoo · database sqlite · 412 files, 830 instances, 2 stores · ingest allowed'
    );
  });
});
