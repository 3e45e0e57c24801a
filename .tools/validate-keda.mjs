// Validates KEDA objects against the KEDA CRD schema as packaged by @kubernetes-models/keda (pinned in
// package-lock.json). Reads a JSON array of objects on stdin; prints one line per object, "ok KIND/NAME" or
// "invalid KIND/NAME: reason"; exits 1 if any is invalid or of a kind it does not know.
import * as keda from "@kubernetes-models/keda/keda.sh/v1alpha1";

let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = 0;
for (const doc of JSON.parse(input)) {
  const where = `${doc.kind}/${doc.metadata?.name}`;
  const Model = doc.apiVersion === "keda.sh/v1alpha1" ? keda[doc.kind] : undefined;
  if (typeof Model !== "function") {
    console.log(`invalid ${where}: not a keda.sh/v1alpha1 kind this schema knows`);
    failed++;
    continue;
  }
  try {
    new Model(doc).validate();
    console.log(`ok ${where}`);
  } catch (err) {
    console.log(`invalid ${where}: ${err.message.replace(/\s+/g, " ")}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
