/**
 * The side panel plugin: the panel in the left area, its commands, job
 * notifications, and the wiring of the event stream into the jobs model.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { FileDialog, IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { PageConfig } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { ArchiveMain, MainNavigation, pageOf } from './main';
import { destinationOf, JobsModel, relativeToRoot, SearchModel, StageModel } from './model';
import { archiveIcon, ArchivePanel, PANEL_ID, serverValidator } from './panel';
import { loadPanelState, panelState, savePanelState, stateKey } from './persist';
import { ArchiveClient, IJob, SearchKind, StageMethod } from './service';
import { StagedModel } from './staged';
import { humanSize, plural } from './format';

export const PANEL_PLUGIN_ID = 'hera_stage_ext:panel';

export namespace PanelCommandIDs {
  export const open = 'hera-stage:open-panel';
  export const openMain = 'hera-stage:open-main';
  export const searchSelection = 'hera-stage:search-selection';
  export const stageSelected = 'hera-stage:stage-selected';
  export const stageAll = 'hera-stage:stage-all';
  export const refreshJobs = 'hera-stage:refresh-jobs';
}

export const panelPlugin: JupyterFrontEndPlugin<void> = {
  id: PANEL_PLUGIN_ID,
  description: 'A side panel to search the archive, stage files and watch jobs.',
  autoStart: true,
  optional: [ILayoutRestorer, IDefaultFileBrowser, ICommandPalette, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    fileBrowser: IDefaultFileBrowser | null,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null
  ) => {
    const serverSettings = app.serviceManager.serverSettings;
    const client = new ArchiveClient(serverSettings.baseUrl, (url, init) =>
      ServerConnection.makeRequest(url, init, serverSettings)
    );
    const search = new SearchModel(request => client.search(request));
    const stage = new StageModel(client);
    const jobs = new JobsModel(client);
    const staged = new StagedModel(client);
    let notify = true;

    // What the user had in the panel before a reload.
    const storageKey = stateKey(serverSettings.baseUrl);
    const restored = loadPanelState(window.localStorage, storageKey) ?? {};

    const browserFolder = (): string | null =>
      fileBrowser ? destinationOf(fileBrowser.model.path) : null;
    if (fileBrowser) {
      stage.set({ destination: destinationOf(fileBrowser.model.path) });
      // Follow the file browser until the user types a destination of their own.
      let followed = stage.destination;
      fileBrowser.model.pathChanged.connect(() => {
        if (stage.destination === followed && !stage.preview) {
          followed = destinationOf(fileBrowser.model.path);
          stage.set({ destination: followed });
        }
      });
    }
    const { sort, destination, method, ...query } = restored;
    search.set(query);
    search.sort = sort === undefined ? search.sort : sort;
    stage.set({
      ...(destination !== undefined ? { destination } : {}),
      ...(method !== undefined ? { method } : {})
    });
    const save = () => savePanelState(window.localStorage, storageKey, panelState(search, stage));
    search.changed.connect(save);
    stage.changed.connect(save);

    /** The folder dialog, opened on the destination when it exists, else on the browser's folder. */
    const pickFolder = fileBrowser
      ? async (current: string): Promise<string | null> => {
          const { manager } = fileBrowser.model;
          const start = destinationOf(current);
          const exists =
            start !== '.' &&
            !start.startsWith('/') &&
            (await manager.services.contents
              .get(start, { content: false })
              .then(model => model.type === 'directory')
              .catch(() => false));
          const result = await FileDialog.getExistingDirectory({
            manager,
            title: 'Stage into folder',
            defaultPath: exists ? start : fileBrowser.model.path,
            // The focus on the Select button, not on the listing (which would select its first
            // folder): with nothing selected, Select chooses the folder shown.
            focusNodeSelector: '.jp-Dialog-button.jp-mod-accept'
          });
          if (!result.button.accept || !result.value?.length) {
            return null;
          }
          return destinationOf(result.value[0].path);
        }
      : null;

    const serverRoot = PageConfig.getOption('serverRoot');
    /** A job's destination as shown and opened: relative to the Jupyter root when inside it. */
    const displayPath = (destination: string): string =>
      relativeToRoot(destination, serverRoot) ?? destination;
    const openFolder = (path: string): void => {
      const folder = relativeToRoot(path, serverRoot);
      if (folder === null) {
        Notification.warning(`${path} is outside the Jupyter root folder: the file browser cannot show it.`, { autoClose: 6000 });
        return;
      }
      if (fileBrowser) {
        void fileBrowser.model.cd('/' + folder).then(() => app.shell.activateById(fileBrowser.id));
      } else {
        void app.commands.execute('filebrowser:go-to-path', { path: folder });
      }
    };

    // The main-area view, made when first opened and again after it is closed.
    const navigation = new MainNavigation();
    let main: ArchiveMain | null = null;
    const validate = serverValidator(client);
    const openMain = (page?: { kind: SearchKind; key: string } | { jobs: true; job?: number | null }): void => {
      if (!main || main.isDisposed) {
        main = new ArchiveMain({
          client,
          search,
          jobs,
          staged,
          navigation,
          validate,
          openFolder,
          displayPath,
          onStage: target => {
            app.shell.activateById(PANEL_ID);
            void stage.previewTarget(target);
          }
        });
      }
      if (page) {
        navigation.go('jobs' in page ? { page: 'jobs', job: page.job ?? null } : pageOf(page.kind, page.key));
      }
      if (!main.isAttached) {
        app.shell.add(main, 'main');
      }
      app.shell.activateById(main.id);
    };

    const panel = new ArchivePanel({
      client,
      search,
      stage,
      jobs,
      staged,
      browserFolder,
      pickFolder,
      openFolder,
      displayPath,
      openMain
    });
    app.shell.add(panel, 'left', { rank: 650 });
    if (restorer) {
      restorer.add(panel, PANEL_ID);
    }

    // Live progress from the server's event bus; polling is the fallback.
    app.serviceManager.events.stream.connect((_, event) => jobs.handleEvent(event));
    stage.launched.connect((_, job) => jobs.add(job));

    jobs.jobEnded.connect((_, job: IJob) => {
      if (!notify) {
        return;
      }
      const where = job.destination ?? '';
      const actions = where
        ? [{ label: 'Open folder', callback: () => openFolder(where), displayType: 'link' as const }]
        : [];
      const done = `${plural(job.files_done, 'file')} (${humanSize(job.bytes_done)})`;
      if (job.state === 'succeeded') {
        Notification.success(`Staging job ${job.id} finished: ${done} in ${displayPath(where)}`, {
          autoClose: 8000,
          actions
        });
      } else if (job.state === 'cancelled') {
        Notification.warning(`Staging job ${job.id} was cancelled after ${done}`, {
          autoClose: 8000,
          actions
        });
      } else {
        Notification.error(
          `Staging job ${job.id} failed${job.error ? `: ${job.error}` : ''} (${done} staged)`,
          { autoClose: false, actions }
        );
      }
    });

    let restoredMethod = method !== undefined;
    if (settingRegistry) {
      settingRegistry
        .load(PANEL_PLUGIN_ID)
        .then(settings => {
          const apply = () => {
            search.pageSize = settings.get('pageSize').composite as number;
            if (!restoredMethod) {
              stage.method = settings.get('defaultMethod').composite as StageMethod;
            }
            notify = settings.get('notifyOnJobEnd').composite as boolean;
            const interval = settings.get('pollInterval').composite as number;
            jobs.poll.frequency = { ...jobs.poll.frequency, interval };
          };
          apply();
          // A method the user chose before the reload wins at load; a change of the setting wins after.
          restoredMethod = false;
          settings.changed.connect(apply);
        })
        .catch(reason => console.warn('hera_stage_ext: settings not loaded', reason));
    }

    const { commands } = app;
    const show = () => {
      app.shell.activateById(panel.id);
    };
    commands.addCommand(PanelCommandIDs.open, {
      label: 'Open HERA Archive Panel',
      caption: 'Search the archive, stage files and watch jobs',
      icon: archiveIcon,
      execute: () => {
        show();
        // Run from the modal palette, this focuses the query box while the palette still
        // has the focus; the palette then closes and gives the focus back to the main
        // area. Focus the query box again once that is done.
        window.setTimeout(() => panel.focusQuery(), 0);
      }
    });
    commands.addCommand(PanelCommandIDs.openMain, {
      label: 'Open HERA Archive in the Main Area',
      caption: 'The results with every column, pages of files, observations and sessions, and the jobs',
      icon: archiveIcon,
      execute: () => openMain()
    });
    // The palette takes the focus (and the page's selection) before a command runs: remember
    // the last text selected outside it.
    let lastSelection = '';
    document.addEventListener('selectionchange', () => {
      if (!document.activeElement?.closest('.lm-CommandPalette')) {
        lastSelection = (window.getSelection()?.toString() ?? '').trim();
      }
    });
    commands.addCommand(PanelCommandIDs.searchSelection, {
      label: 'Search the Archive for the Selected Text',
      execute: () => {
        const text = (editorSelection(app.shell.currentWidget) || lastSelection).trim().split('\n')[0];
        show();
        if (text) {
          search.set({ mode: 'text', text });
          void search.run();
        }
      }
    });
    // (A context menu selector takes no commas: one item per place.)
    for (const selector of ['.jp-Notebook .jp-Cell', '.jp-FileEditor', '.jp-OutputArea-output']) {
      app.contextMenu.addItem({ command: PanelCommandIDs.searchSelection, selector, rank: 90 });
    }
    commands.addCommand(PanelCommandIDs.stageSelected, {
      label: 'Stage the Selected Archive Files (Preview)',
      isEnabled: () => search.selectedNames().length > 0,
      execute: () => {
        show();
        return stage.previewTarget({ names: search.selectedNames() });
      }
    });
    commands.addCommand(PanelCommandIDs.stageAll, {
      label: 'Stage All Archive Search Results (Preview)',
      isEnabled: () => search.allResultsTarget() !== null,
      execute: () => {
        show();
        const target = search.allResultsTarget();
        return target ? stage.previewTarget(target) : undefined;
      }
    });
    commands.addCommand(PanelCommandIDs.refreshJobs, {
      label: 'Refresh Archive Staging Jobs',
      execute: () => jobs.refresh()
    });
    search.changed.connect(() => commands.notifyCommandChanged());

    if (palette) {
      for (const command of Object.values(PanelCommandIDs)) {
        palette.addItem({ command, category: 'HERA Stage' });
      }
    }
  }
};

/**
 * The text selected in a widget's code editor (a notebook's active cell, a file editor), or ''.
 * Typed loosely so the panel needs no notebook or file editor package.
 */
function editorSelection(widget: unknown): string {
  const content = (widget as { content?: any } | null)?.content;
  const editor = content?.activeCell?.editor ?? content?.editor;
  if (!editor || typeof editor.getSelection !== 'function') {
    return '';
  }
  try {
    const selection = editor.getSelection();
    const a = editor.getOffsetAt(selection.start);
    const b = editor.getOffsetAt(selection.end);
    return editor.model.sharedModel.getSource().slice(Math.min(a, b), Math.max(a, b));
  } catch {
    return '';
  }
}
