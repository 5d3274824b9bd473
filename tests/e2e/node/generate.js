// A client in another language: streams one generation through Envoy with @grpc/grpc-js and
// @grpc/proto-loader, loading the published protos, and prints each event as a JSON line.
// Usage: MESHLLM_API_KEY=<key> node generate.js <host:port> <protos dir> <max_tokens>
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [target, protosDir, maxTokens] = process.argv.slice(2);
const definition = protoLoader.loadSync(
  path.join(protosDir, "meshllm/inference/v1/inference.proto"),
  { includeDirs: [protosDir], keepCase: false, longs: String, enums: String, defaults: true, oneofs: true },
);
const inference = grpc.loadPackageDefinition(definition).meshllm.inference.v1;
const client = new inference.InferenceService(target, grpc.credentials.createInsecure());

const metadata = new grpc.Metadata();
metadata.set("authorization", `Bearer ${process.env.MESHLLM_API_KEY}`);
const call = client.Generate(
  {
    chat: { messages: [{ role: "ROLE_USER", content: "Hello from Node" }] },
    sampling: { maxTokens: Number(maxTokens) },
    labels: { team: "node-client" },
  },
  metadata,
  { deadline: Date.now() + 120000 },
);
call.on("data", (event) => console.log(JSON.stringify(event)));
call.on("error", (error) => {
  console.error(`grpc error ${error.code}: ${error.details}`);
  process.exit(1);
});
call.on("end", () => client.close());
