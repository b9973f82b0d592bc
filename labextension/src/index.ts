import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Dialog, ICommandPalette, showDialog } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Widget } from '@lumino/widgets';

import { panelPlugin } from './plugin';

import { IArchiveStatus, StatusResult, statusText, statusTitle } from './status';

export { IArchiveStatus, StatusResult, statusText, statusTitle } from './status';

/** The plugin id; also the prefix of the status bar item id. */
const PLUGIN_ID = 'hera_stage_ext:plugin';

/** Server route of the status endpoint, relative to the server's base URL. */
const STATUS_ROUTE = 'hera-stage/api/status';

/** Command ids. */
export namespace CommandIDs {
  export const showStatus = 'hera-stage:show-status';
}

/**
 * GET the server extension's status.
 *
 * A 404 or a request that never reaches the server means the server
 * extension is missing; any other non-2xx answer is reported as an error.
 */
export async function requestStatus(
  settings: ServerConnection.ISettings
): Promise<StatusResult> {
  const url = URLExt.join(settings.baseUrl, STATUS_ROUTE);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, {}, settings);
  } catch (reason) {
    return {
      kind: 'missing',
      message: `Could not reach ${url}: ${reason}`
    };
  }
  if (response.status === 404) {
    return {
      kind: 'missing',
      message:
        `${url} returned 404: the hera_stage_ext server extension is not ` +
        'installed or not enabled (check `jupyter server extension list`).'
    };
  }
  if (!response.ok) {
    const text = await response.text().catch(() => '');
    return {
      kind: 'error',
      httpStatus: response.status,
      message: `${url} returned HTTP ${response.status}: ${text}`
    };
  }
  try {
    const status = (await response.json()) as IArchiveStatus;
    return { kind: 'ok', status };
  } catch (reason) {
    return {
      kind: 'error',
      httpStatus: response.status,
      message: `${url} did not return JSON: ${reason}`
    };
  }
}

/** Status bar item showing e.g. "Archive: 412 files". */
class ArchiveStatusItem extends Widget {
  constructor(onClick: () => void) {
    super();
    this.addClass('jp-HeraStage-statusItem');
    this._label = document.createElement('span');
    this._label.className = 'jp-StatusBar-TextItem';
    this._label.textContent = 'Archive: …';
    this.node.appendChild(this._label);
    this.node.addEventListener('click', onClick);
  }

  setResult(result: StatusResult): void {
    this._label.textContent = statusText(result);
    this.node.title = statusTitle(result);
    this.toggleClass('jp-mod-missing', result.kind !== 'ok');
  }

  private _label: HTMLSpanElement;
}

/** Dialog body: the status JSON, or the reason there is none. */
function statusBody(result: StatusResult): Widget {
  const pre = document.createElement('pre');
  pre.className = 'jp-HeraStage-statusJson';
  pre.textContent =
    result.kind === 'ok'
      ? JSON.stringify(result.status, null, 2)
      : `${statusText(result)}\n\n${result.message}`;
  return new Widget({ node: pre });
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'Shows the status of the hera_stage_ext archive server extension.',
  autoStart: true,
  optional: [IStatusBar, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    statusBar: IStatusBar | null,
    palette: ICommandPalette | null
  ) => {
    console.log('hera_stage_ext is activated');

    const settings = app.serviceManager.serverSettings;
    let item: ArchiveStatusItem | null = null;

    const refresh = async (): Promise<StatusResult> => {
      const result = await requestStatus(settings);
      item?.setResult(result);
      if (result.kind !== 'ok') {
        console.warn(`hera_stage_ext: ${result.message}`);
      }
      return result;
    };

    app.commands.addCommand(CommandIDs.showStatus, {
      label: 'Show HERA Stage Archive Status',
      caption: 'Query the hera_stage_ext server extension and show its status',
      execute: async () => {
        const result = await refresh();
        await showDialog({
          title: 'HERA Stage archive status',
          body: statusBody(result),
          buttons: [Dialog.okButton()]
        });
        return result;
      }
    });

    if (palette) {
      palette.addItem({ command: CommandIDs.showStatus, category: 'HERA Stage' });
    }

    if (statusBar) {
      item = new ArchiveStatusItem(() => {
        void app.commands.execute(CommandIDs.showStatus);
      });
      statusBar.registerStatusItem('hera_stage_ext:status', {
        item,
        align: 'left',
        rank: 900
      });
    }

    void refresh();
  }
};

export default [plugin, panelPlugin];
