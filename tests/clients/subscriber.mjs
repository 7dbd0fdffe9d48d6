// A subscriber written as a JavaScript user would: Node's zeromq package and the strict JSON.parse.
//   node subscriber.mjs ADDRESS
// Prints "ready" once connecting, then one JSON line {topic, message, t_receive} per message, and
// ends when the stream has been idle for 3 s after the first message (30 s before it). A payload
// that JSON.parse rejects ends the program with exit code 3 and the offending text on stderr.
import { Subscriber } from "zeromq";

const address = process.argv[2];
const socket = new Subscriber({ receiveTimeout: 30000, linger: 0, reconnectInterval: 10 });
socket.connect(address);
socket.subscribe(); // every topic: pos, event, status
console.log("ready");
for (;;) {
  let parts;
  try {
    parts = await socket.receive();
  } catch (error) {
    if (error.code === "EAGAIN") break; // idle: the session has ended
    throw error;
  }
  const tReceive = Date.now() / 1000;
  socket.receiveTimeout = 3000;
  const [topic, payload] = parts;
  let message;
  try {
    message = JSON.parse(payload.toString("utf8"));
  } catch (error) {
    console.error(`JSON.parse rejected a ${topic} payload: ${error.message}: ${payload.toString("utf8").slice(0, 200)}`);
    process.exit(3);
  }
  console.log(JSON.stringify({ topic: topic.toString(), message, t_receive: tReceive }));
}
socket.close();
