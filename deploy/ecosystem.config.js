// PM2 process file for the streetcascade miner (the reference miner ships one too).
//   pm2 start deploy/ecosystem.config.js && pm2 save      # run from the checkout
//   pm2 logs streetcascade-miner
// To keep the reference miner's miner.env, replace "--config", "miner.toml" with
// "--env-file", "miner.env", "--engine", "engines/cpu-x86_64" (or use both files).
module.exports = {
  apps: [
    {
      name: "streetcascade-miner",
      script: ".venv/bin/streetcascade",
      args: ["serve", "--config", "miner.toml"],
      interpreter: "none",
      cwd: __dirname + "/..",
      autorestart: true,
      restart_delay: 5000,
      max_restarts: 50,
      // SIGTERM, then up to graceful_shutdown_s (15 s) for in-flight requests.
      kill_timeout: 30000,
      // PM2 does not lift the open-files limit: start PM2 from a shell with `ulimit -n 65536`.
      env: { PYTHONUNBUFFERED: "1" },
    },
  ],
};
