import { humanDuration, humanRate, humanSize, plural, shortTime } from '../format';

describe('humanSize', () => {
  it.each([
    [0, '0 B'],
    [999, '999 B'],
    [1023, '1023 B'],
    [1024, '1.00 KiB'],
    [29030, '28.3 KiB'],
    [1536 * 1024, '1.50 MiB'],
    [500 * 1024 * 1024, '500 MiB'],
    [4 * 1024 ** 3, '4.00 GiB'],
    [3 * 1024 ** 5, '3.00 PiB'],
    [-2048, '-2.00 KiB']
  ])('%d bytes is %s', (bytes, text) => {
    expect(humanSize(bytes)).toBe(text);
  });

  it('shows a dash when unknown', () => {
    expect(humanSize(null)).toBe('—');
    expect(humanSize(undefined)).toBe('—');
    expect(humanSize(NaN)).toBe('—');
  });
});

describe('humanRate and humanDuration', () => {
  it('formats rates', () => {
    expect(humanRate(2.5 * 1024 * 1024)).toBe('2.50 MiB/s');
    expect(humanRate(null)).toBe('—');
    expect(humanRate(-1)).toBe('—');
  });

  it.each([
    [0, '0 s'],
    [44.6, '45 s'],
    [60, '1 min'],
    [200, '3 min 20 s'],
    [7500, '2 h 05 min']
  ])('%d s is %s', (s, text) => {
    expect(humanDuration(s)).toBe(text);
  });

  it('is a dash when unknown', () => {
    expect(humanDuration(null)).toBe('—');
    expect(humanDuration(Infinity)).toBe('—');
  });
});

describe('shortTime and plural', () => {
  it('shows UTC minutes', () => {
    expect(shortTime('2026-11-21T16:22:43.797494Z')).toBe('2026-11-21 16:22');
    expect(shortTime(null)).toBe('—');
    expect(shortTime('not a time')).toBe('not a time');
  });

  it('pluralizes', () => {
    expect(plural(1, 'file')).toBe('1 file');
    expect(plural(12000, 'file')).toBe('12,000 files');
  });
});
