/** Unit tests for the pure helpers in labextension/src (no JupyterLab runtime needed). */
module.exports = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  roots: ['<rootDir>/labextension/src'],
  testRegex: '/__tests__/.*\\.spec\\.ts$',
  collectCoverageFrom: ['labextension/src/{status,format,service,model,persist,staged}.ts'],
  coverageDirectory: '<rootDir>/test-output/coverage',
  coverageReporters: ['text-summary', 'lcov'],
  transform: {
    '^.+\\.ts$': ['ts-jest', { tsconfig: { module: 'commonjs', types: ['jest'] } }]
  }
};
