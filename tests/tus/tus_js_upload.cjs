// One tus-js-client run against the gateway, as a recorder built on it would make one.
//   node tus_js_upload.cjs start  ENDPOINT  FILE CHUNK STOP_AFTER  (creates, stops after STOP_AFTER bytes)
//   node tus_js_upload.cjs resume UPLOAD_URL FILE CHUNK             (a new process resumes that URL)
//   node tus_js_upload.cjs defer  ENDPOINT  FILE CHUNK             (a stream of unknown length)
// The bearer token comes from LUCID_TOKEN. Prints one JSON line: {"url", "offset", "done"}.
'use strict'
const fs = require('node:fs')
const { Readable } = require('node:stream')
const tus = require('tus-js-client')

const [mode, target, file, chunk, stopAfter] = process.argv.slice(2)
const data = fs.readFileSync(file)
const report = (fields) => process.stdout.write(JSON.stringify(fields) + '\n')
const fail = (err) => { process.stderr.write(`tus-js-client: ${err}\n`); process.exit(1) }

const options = {
  chunkSize: Number(chunk),
  headers: { Authorization: `Bearer ${process.env.LUCID_TOKEN}` },
  retryDelays: [],
  onError: fail,
  onSuccess: () => { report({ url: upload.url, offset: data.length, done: true }) },
}
let upload
if (mode === 'start') {
  // Uppy's default metadata, and the first chunk in the creation request.
  options.endpoint = target
  options.uploadDataDuringCreation = true
  options.metadata = { relativePath: 'null', name: 'desk.rec', type: 'video/x-lucid',
                       filetype: 'video/x-lucid', filename: 'desk.rec' }
  options.onChunkComplete = (size, accepted) => {
    if (accepted >= Number(stopAfter)) {  // the recorder dies here: no goodbye, no abort
      report({ url: upload.url, offset: accepted, done: false })
      process.exit(0)
    }
  }
  upload = new tus.Upload(data, options)
} else if (mode === 'resume') {
  options.uploadUrl = target
  upload = new tus.Upload(data, options)
} else if (mode === 'defer') {
  options.endpoint = target
  options.uploadLengthDeferred = true
  upload = new tus.Upload(Readable.from([data]), options)
} else {
  fail(`unknown mode ${mode}`)
}
upload.start()
