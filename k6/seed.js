// The seed's load test: 20 virtual users for one minute, no errors, average under
// 300 ms and p95 under 600 ms.
//   k6 run -e PYRON_URL=https://alerts.example.com -e PYRON_TOKEN=... k6/seed.js
import { sleep } from "k6";
import { postAlert } from "./common.js";

/** @type {import("k6/options").Options} */
export const options = {
  vus: 20,
  duration: "1m",
  thresholds: {
    http_req_failed: ["rate==0"],
    http_req_duration: ["avg<300", "p(95)<600"],
  },
};

export default function () {
  postAlert();
  // About 1,000 requests a minute from 20 users, as in the seed's target.
  sleep(1.2);
}
