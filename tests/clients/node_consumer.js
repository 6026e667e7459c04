// A Node Live Stream consumer: http.get + zlib gunzip + CRLF split.
// usage: node node_consumer.js URL COUNT  -> prints COUNT hit sequence numbers, then exits
const http = require("http");
const zlib = require("zlib");

const [url, count] = [process.argv[2], Number(process.argv[3])];
let seen = 0;
let tail = "";
const req = http.get(url, { headers: { "Accept-Encoding": "gzip" } }, (res) => {
  if (res.statusCode !== 200) {
    console.error(`status ${res.statusCode}`);
    process.exit(2);
  }
  const body = res.headers["content-encoding"] === "gzip" ? res.pipe(zlib.createGunzip()) : res;
  body.setEncoding("utf8");
  body.on("data", (text) => {
    tail += text;
    const records = tail.split("\r\n");
    tail = records.pop();
    for (const record of records) {
      if (!record) continue; // empty records and heartbeats
      // ids exceed 2^53: never JSON.parse them into numbers
      const low = BigInt(/"hitIdLow":(\d+)/.exec(record)[1]);
      console.log((low - (1n << 60n)).toString());
      if (++seen === count) {
        req.destroy();
        process.exit(0);
      }
    }
  });
});
req.on("error", (err) => {
  console.error(err.message);
  process.exit(1);
});
