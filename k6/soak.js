// Soak: a steady rate for 30 minutes, to show that latency and memory stay flat.
//   k6 run -e PYRON_URL=... -e PYRON_TOKEN=... -e RATE=200 k6/soak.js
import { postAlert } from "./common.js";

/** @type {import("k6/options").Options} */
export const options = {
  scenarios: {
    steady: {
      executor: "constant-arrival-rate",
      rate: Number(__ENV.RATE || 200),
      timeUnit: "1s",
      duration: "30m",
      preAllocatedVUs: 50,
      maxVUs: 500,
    },
  },
  thresholds: {
    http_req_failed: ["rate==0"],
    http_req_duration: ["p(95)<100", "p(99)<300"],
  },
};

export default function () {
  postAlert();
}
