/**
 * Pure helpers for the archive status (no JupyterLab imports, so jest can
 * test them without a browser environment).
 */

/** Shape of GET <baseUrl>/hera-stage/api/status, served by the Python side. */
export interface IArchiveStatus {
  version: string;
  site_name?: string;
  database?: string;
  counts?: {
    files?: number;
    instances?: number;
    stores?: number;
    [key: string]: number | undefined;
  };
  allow_ingest?: boolean;
  [key: string]: unknown;
}

/** Outcome of one status request. */
export type StatusResult =
  | { kind: 'ok'; status: IArchiveStatus }
  /** 404 or no answer at all: the server extension is not installed/enabled. */
  | { kind: 'missing'; message: string }
  /** The server extension answered, but with an error (e.g. 403, 500). */
  | { kind: 'error'; httpStatus: number; message: string };

/** The text shown in the status bar. */
export function statusText(result: StatusResult): string {
  switch (result.kind) {
    case 'ok': {
      const files = result.status.counts?.files;
      if (typeof files !== 'number') {
        return 'Archive: connected';
      }
      return `Archive: ${files.toLocaleString('en-US')} ${
        files === 1 ? 'file' : 'files'
      }`;
    }
    case 'missing':
      return 'Archive: server extension missing';
    case 'error':
      return `Archive: error (HTTP ${result.httpStatus})`;
  }
}

/** A longer description, used as the status bar item's tooltip. */
export function statusTitle(result: StatusResult): string {
  switch (result.kind) {
    case 'ok': {
      const s = result.status;
      const c = s.counts ?? {};
      const parts = [
        `HERA Stage ${s.version}`,
        s.site_name ? `site ${s.site_name}` : '',
        s.database ? `database ${s.database}` : '',
        `${c.files ?? '?'} files, ${c.instances ?? '?'} instances, ${
          c.stores ?? '?'
        } stores`,
        s.allow_ingest === undefined
          ? ''
          : `ingest ${s.allow_ingest ? 'allowed' : 'disabled'}`
      ];
      return parts.filter(Boolean).join(' · ');
    }
    case 'missing':
    case 'error':
      return result.message;
  }
}
