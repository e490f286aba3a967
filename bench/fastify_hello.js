// Baseline of bench/run.py: Fastify 5 hello world, POST /hello -> {"hello":"world"} (the original
// TicketBlitz ran on Fastify). Installed by run.py with `npm install --prefix bench/.node fastify@5`.
//
//   node bench/fastify_hello.js PORT      (listens on 127.0.0.1 only; prints "listening" when ready)
'use strict'

const path = require('node:path')
const fastify = require(path.join(__dirname, '.node', 'node_modules', 'fastify'))({ logger: false })

const port = Number(process.argv[2] || 3000)

fastify.post('/hello', async () => ({ hello: 'world' }))
fastify.get('/hello', async () => ({ hello: 'world' }))

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    fastify.close().then(() => process.exit(0), () => process.exit(1))
  })
}

fastify.listen({ host: '127.0.0.1', port }).then(
  () => console.log(`listening on http://127.0.0.1:${port}`),
  (err) => { console.error(err); process.exit(1) }
)
