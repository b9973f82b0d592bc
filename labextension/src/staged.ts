/**
 * The user's staged data in the panel: the list of staged folders (GET staged) and cleaning
 * them (POST staged/clean), always a dry run first, shown for confirmation, then the clean,
 * then the list again. What each folder's report means in words.
 *
 * Only Lumino and our own modules are imported, so jest tests this with a fake client.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { humanSize, plural, shortTime } from './format';
import { errorMessage } from './model';
import { ArchiveClient, ICleanedFolder, ICleanReport, ICleanRequest, IStagedFolder, IStagedView } from './service';

/** What to clean: the expired folders, or these (absolute paths, as GET staged gives them). */
export type CleanTarget = { expired: true } | { folders: string[] };

/** A folder of a dry run, in words: what would go and what stays (and why). */
export interface IPlannedFolder {
  destination: string;
  state: string;
  files: number;
  bytes: number;
  /** Lines about what stays: the server's reasons, the user's files, missing entries. */
  kept: string[];
}

/** A dry run in words. */
export interface ICleanPlan {
  folders: IPlannedFolder[];
  files: number;
  bytes: number;
  /** Whether confirming does anything: files to remove, or records of gone folders to drop. */
  actionable: boolean;
}

/** What a clean did (or why nothing happened), to show after it. */
export interface ICleanOutcome {
  kind: 'cleaned' | 'cancelled' | 'nothing' | 'error';
  message: string;
  /** What stayed and why, per folder (the server's words). */
  kept: string[];
}

/** "expired 2026-12-06 07:05", "expires …", or "no expiry". */
export function expiryText(folder: Pick<IStagedFolder, 'expires_at' | 'expired' | 'state'>, now = Date.now()): string {
  if (!folder.expires_at) {
    return 'no expiry';
  }
  return `${hasExpired(folder, now) ? 'expired' : 'expires'} ${shortTime(folder.expires_at)} UTC`;
}

/** Whether a folder has expired, by the server's word or by the clock since it was read. */
export function hasExpired(folder: Pick<IStagedFolder, 'expires_at' | 'expired' | 'state'>, now = Date.now()): boolean {
  if (folder.expired) {
    return true;
  }
  const until = folder.expires_at ? Date.parse(folder.expires_at) : NaN;
  return folder.state !== 'busy' && Number.isFinite(until) && until <= now;
}

/** The state in a few words: "intact", "changed: 1 file of yours, 2 changed", the reason. */
export function stateText(folder: IStagedFolder): string {
  if (folder.state !== 'changed') {
    return folder.reason ? `${folder.state}: ${folder.reason}` : folder.state;
  }
  const parts: string[] = [];
  if (folder.foreign_count) {
    parts.push(`${plural(folder.foreign_count, 'item')} not staged`);
  }
  if (folder.changed_count) {
    parts.push(`${folder.changed_count} changed`);
  }
  if (folder.missing_count) {
    parts.push(`${folder.missing_count} missing`);
  }
  return parts.length ? `changed: ${parts.join(', ')}` : 'changed';
}

/** What stays of a folder a clean touches, and why, in the server's words. */
export function keptLines(folder: ICleanedFolder): string[] {
  const lines: string[] = [];
  if (folder.reason) {
    lines.push(folder.reason);
  }
  for (const c of folder.changed ?? []) {
    lines.push(`${c.path}: ${c.reason} (kept)`);
  }
  more(lines, folder.changed, folder.changed_count, 'changed');
  for (const f of folder.foreign ?? []) {
    lines.push(`${f}: not staged (kept)`);
  }
  more(lines, folder.foreign, folder.foreign_count, 'not staged');
  const missing = folder.missing_count ?? 0;
  if (missing) {
    lines.push(`${plural(missing, 'staged entry', 'staged entries')} missing already`);
  }
  for (const e of folder.errors ?? []) {
    lines.push(`${e.path}: ${e.reason}`);
  }
  return lines;
}

function more(lines: string[], shown: unknown[] | undefined, total: number | undefined, what: string): void {
  const rest = (total ?? 0) - (shown?.length ?? 0);
  if (rest > 0) {
    lines.push(`… and ${rest} more ${what}`);
  }
}

/** A dry run's report as the confirmation shows it. */
export function planOf(report: ICleanReport): ICleanPlan {
  const folders = report.folders.map(f => ({
    destination: f.destination,
    state: f.state,
    files: f.would_remove_files ?? 0,
    bytes: f.would_remove_bytes ?? 0,
    kept: keptLines(f)
  }));
  const files = folders.reduce((sum, f) => sum + f.files, 0);
  const bytes = folders.reduce((sum, f) => sum + f.bytes, 0);
  return { folders, files, bytes, actionable: files > 0 || folders.some(f => f.state === 'gone') };
}

/** A clean's report as the panel says it after the clean. */
export function outcomeOf(report: ICleanReport, displayPath: (p: string) => string = p => p): ICleanOutcome {
  const removedFolders = report.folders.filter(f => f.folder_removed).length;
  const kept: string[] = [];
  for (const f of report.folders) {
    for (const line of keptLines(f)) {
      kept.push(`${displayPath(f.destination) || '(root folder)'}: ${line}`);
    }
  }
  let message = `Removed ${plural(report.removed_files, 'file')} (${humanSize(report.removed_bytes)})`;
  message += ` from ${plural(report.folders.length, 'folder')}`;
  if (removedFolders) {
    message += `; ${plural(removedFolders, 'folder')} removed`;
  }
  return { kind: 'cleaned', message: message + '.', kept };
}

/**
 * The staged folders and the clean flow. `confirm` is asked with the dry run's plan (the
 * panel shows a dialog); only a confirmed plan is cleaned for real.
 */
export class StagedModel {
  constructor(client: Pick<ArchiveClient, 'staged' | 'cleanStaged'>) {
    this._client = client;
  }

  get view(): IStagedView | null {
    return this._view;
  }

  /** The last load's error (the server's message); null when the list is current. */
  get error(): string | null {
    return this._error;
  }

  get loading(): boolean {
    return this._loading;
  }

  /** Whether a clean (its dry run, confirmation or removal) is under way. */
  get cleaning(): boolean {
    return this._cleaning;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Read the staged folders again. */
  async refresh(): Promise<void> {
    // Only the latest read counts (a slow earlier one must not overwrite it).
    const generation = ++this._generation;
    this._loading = true;
    this._changed.emit();
    try {
      const view = await this._client.staged();
      if (generation === this._generation) {
        this._view = view;
        this._error = null;
      }
    } catch (reason) {
      if (generation === this._generation) {
        this._error = errorMessage(reason);
      }
    } finally {
      if (generation === this._generation) {
        this._loading = false;
        this._changed.emit();
      }
    }
  }

  /**
   * Clean `target`: a dry run, `confirm(plan)` (not asked when there is nothing to do), the
   * clean, then the list again. Never throws: an error is the outcome (the server's message).
   */
  async clean(
    target: CleanTarget,
    confirm: (plan: ICleanPlan, target: CleanTarget) => Promise<boolean>,
    displayPath?: (p: string) => string
  ): Promise<ICleanOutcome> {
    if (this._cleaning) {
      return { kind: 'nothing', message: 'A clean is under way already.', kept: [] };
    }
    this._cleaning = true;
    this._changed.emit();
    const request: ICleanRequest = 'expired' in target ? { expired: true } : { folders: target.folders };
    let outcome: ICleanOutcome;
    try {
      const plan = planOf(await this._client.cleanStaged({ ...request, dry_run: true }));
      if (!plan.folders.length) {
        outcome = { kind: 'nothing', message: 'Nothing to clean: no staged folder has expired.', kept: [] };
      } else if (!(await confirm(plan, target))) {
        outcome = { kind: 'cancelled', message: 'Nothing was removed.', kept: [] };
      } else {
        outcome = outcomeOf(await this._client.cleanStaged({ ...request, dry_run: false }), displayPath);
      }
    } catch (reason) {
      outcome = { kind: 'error', message: errorMessage(reason), kept: [] };
    }
    this._cleaning = false;
    this._outcome = outcome;
    await this.refresh();
    return outcome;
  }

  /** What the last clean did; null once dismissed. */
  get outcome(): ICleanOutcome | null {
    return this._outcome;
  }

  dismissOutcome(): void {
    this._outcome = null;
    this._changed.emit();
  }

  private _client: Pick<ArchiveClient, 'staged' | 'cleanStaged'>;
  private _view: IStagedView | null = null;
  private _error: string | null = null;
  private _loading = false;
  private _generation = 0;
  private _cleaning = false;
  private _outcome: ICleanOutcome | null = null;
  private _changed = new Signal<this, void>(this);
}
