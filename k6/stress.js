// Stress: the arrival rate climbs in steps until Pyron cannot keep up; the thresholds
// mark where the answer stops being fast enough for TradingView.
//   k6 run -e PYRON_URL=... -e PYRON_TOKEN=... -e PEAK=4000 k6/stress.js
import { postAlert } from "./common.js";

const PEAK = Number(__ENV.PEAK || 4000);

/** @type {import("k6/options").Options} */
export const options = {
  scenarios: {
    climb: {
      executor: "ramping-arrival-rate",
      startRate: 50,
      timeUnit: "1s",
      preAllocatedVUs: 100,
      maxVUs: 1000,
      stages: [
        { target: Math.round(PEAK / 4), duration: "1m" },
        { target: Math.round(PEAK / 2), duration: "1m" },
        { target: PEAK, duration: "2m" },
        { target: PEAK, duration: "1m" },
        { target: 0, duration: "30s" },
      ],
    },
  },
  thresholds: {
    http_req_failed: ["rate<0.001"],
    http_req_duration: ["p(99)<1000"],
  },
};

export default function () {
  postAlert();
}
