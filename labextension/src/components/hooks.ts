import * as React from 'react';
import { ISignal } from '@lumino/signaling';

/** Re-render whenever `signal` fires. */
export function useSignal(signal: ISignal<any, any>): number {
  const [tick, setTick] = React.useState(0);
  React.useEffect(() => {
    const onChange = () => setTick(t => t + 1);
    signal.connect(onChange);
    return () => {
      signal.disconnect(onChange);
    };
  }, [signal]);
  return tick;
}

/** Call `fn` every `ms` while `active`. */
export function useInterval(fn: () => void, ms: number, active: boolean): void {
  const saved = React.useRef(fn);
  saved.current = fn;
  React.useEffect(() => {
    if (!active) {
      return;
    }
    const handle = setInterval(() => saved.current(), ms);
    return () => clearInterval(handle);
  }, [ms, active]);
}
