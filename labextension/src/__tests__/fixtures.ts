/** Whole API records for the tests, from the few fields a test cares about. */
import { IJob } from '../service';

/** A job as the API answers it: `fields` over a queued copy job of nothing. */
export function aJob(fields: Partial<IJob> & Pick<IJob, 'id'>): IJob {
  return {
    owner: 'user',
    kind: 'stage',
    state: 'queued',
    destination: '',
    method: 'copy',
    files_total: 0,
    bytes_total: 0,
    files_done: 0,
    bytes_done: 0,
    files_failed: 0,
    files_skipped: 0,
    missing: [],
    ...fields
  };
}
