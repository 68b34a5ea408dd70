export * from './base';
export * from './images';
export * from './jobs';
export * from './services';
export * from './celljob';
export * from './vitals';
